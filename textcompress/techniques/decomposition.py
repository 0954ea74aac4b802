"""Tensor decomposition: truncated SVD of linear layers, and ALBERT's factorised embedding.

- `low_rank`: each chosen `nn.Linear` W (out × in) becomes up·down with rank r, initialised from
  the SVD W = U S Vᵀ (down = √S·Vᵀ[:r], up = U[:, :r]·√S, the bias kept). The rank is fixed, a
  ratio of min(in, out), or the smallest keeping a fraction of the spectral energy Σσ². A layer
  whose factorised form would not be smaller (r·(in + out) ≥ in·out) is left dense: fewer
  multiply-adds is also what makes it faster.
  `fit: activations` truncates what the layer computes on real inputs instead of its weights:
  with G = Σ x xᵀ over calibration sentences' tokens and G = L Lᵀ, the SVD of W·L truncated and
  mapped back by L⁻¹ minimises ‖(W − W_r)·X‖ (the whitening of SVD-LLM, Wang et al., 2024).
  On the SST-2 teacher at a third of full rank, before any recovery: 90.25 % against 83.72 %
  for the plain SVD (teacher 90.48 %).
- `factorize_embedding`: the vocabulary × hidden table becomes vocabulary × E and E × hidden,
  from the SVD of the teacher's table. `fit: frequency` weights each row by how often the
  training data uses it (count + 1), so the E directions serve the pieces that occur: at
  E = 128 on the SST-2 teacher, 88.76 % against 82.45 % unweighted, before recovery.
Both end with a recovery fine-tune against the teacher. On an LSTM/GRU model, `low_rank` with
`modules: input | hidden | recurrent` factorises W_ih, W_hh or both (techniques/recurrent.py).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from textcompress.data import token_counts
from textcompress.errors import RecipeError
from textcompress.models.encoder import LAYER_LINEARS, LowRankLinear, TextClassifier, count_parameters
from textcompress.techniques.base import RECOVERY, Technique
from textcompress.techniques.recovery import recover


def choose_rank(singular_values: torch.Tensor, rank: int = 0, ratio: float = 0.0, energy: float = 0.0) -> int:
    """Exactly one of rank (fixed), ratio (of the full rank) or energy (fraction of Σσ² kept)."""
    full = len(singular_values)
    if rank:
        return min(rank, full)
    if ratio:
        return max(1, round(ratio * full))
    if energy:
        cumulative = torch.cumsum(singular_values.double() ** 2, 0) / (singular_values.double() ** 2).sum()
        return min(full, int((cumulative < energy).sum()) + 1)
    raise RecipeError("low_rank", "no rank, ratio or energy given", "give one of rank, ratio or energy")


def whitening(gram: torch.Tensor) -> torch.Tensor:
    """L with L·Lᵀ = G (lower triangular), G = Σ x xᵀ of a layer's inputs; a small ridge keeps
    it invertible when some input direction never varies."""
    gram = gram.double()
    ridge = 1e-6 * gram.diagonal().mean().clamp_min(1e-12)
    return torch.linalg.cholesky(gram + ridge * torch.eye(len(gram), dtype=gram.dtype))


def spectrum(linear: nn.Linear, gram: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values the rank rules read: of W, or of W·L (the layer's outputs on the data)."""
    w = linear.weight.detach().double()
    return torch.linalg.svdvals(w if gram is None else w @ whitening(gram))


def low_rank_factors(weight: torch.Tensor, r: int, gram: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(down: r × in, up: out × r) with up·down the rank-r matrix closest to `weight`, or with
    `gram` (Σ x xᵀ of its inputs) the one whose outputs on those inputs come closest."""
    w = weight.detach().double()
    whiten = None if gram is None else whitening(gram)
    u, s, vh = torch.linalg.svd(w if whiten is None else w @ whiten, full_matrices=False)
    root = s[:r].sqrt()
    down = root[:, None] * vh[:r]
    if whiten is not None:  # down·L⁻¹, by a triangular solve rather than an inverse
        down = torch.linalg.solve_triangular(whiten, down, upper=False, left=False)
    return down.float(), (u[:, :r] * root[None, :]).float()


def factorize_linear(linear: nn.Linear, r: int, gram: torch.Tensor | None = None) -> LowRankLinear:
    """Rank-r factors of `linear` (see `low_rank_factors`), its bias kept."""
    factored = LowRankLinear(linear.in_features, linear.out_features, r)
    factored.down.weight.data, factored.up.weight.data = low_rank_factors(linear.weight, r, gram)
    factored.up.bias.data = linear.bias.detach().clone()
    return factored


def target_names(model: TextClassifier, modules: str) -> list[str]:
    return [f"encoder.layer.{i}.{name}" for i in range(model.config.num_layers) for name in LAYER_LINEARS[modules]]


@torch.no_grad()
def input_grams(model: TextClassifier, names: list[str], batches: list[dict]) -> dict[str, torch.Tensor]:
    """Σ x xᵀ (float64) of each named linear's inputs over the batches' real tokens (padding left out)."""
    grams, real = {}, {}

    def observer(name):
        def hook(module, inputs):
            x = inputs[0][real["mask"]].double()  # (real tokens, in)
            grams[name] = grams.get(name, 0) + x.T @ x
        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(observer(name)) for name in names]
    model.eval()
    try:
        for batch in batches:
            mask = torch.from_numpy(batch["attention_mask"])
            real["mask"] = mask.bool()
            model(torch.from_numpy(batch["input_ids"]), mask)
    finally:
        for handle in handles:
            handle.remove()
    return grams


def low_rank(model: TextClassifier, modules: str = "ffn", rank: int = 0, ratio: float = 0.0,
             energy: float = 0.0, grams: dict[str, torch.Tensor] | None = None) -> tuple[TextClassifier, dict]:
    """A copy with the chosen linears factorised; returns it and {module: rank, or "dense (why)"}.
    With `grams` (from `input_grams`), ranks and factors fit each layer's outputs on those inputs."""
    if model.config.shared_layers:
        raise RecipeError("low_rank", "the model already shares layers", "put decomposition before sharing in the recipe")
    decided, ranks = {}, {}
    for name in target_names(model, modules):
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            continue  # already factorised by an earlier step
        r = choose_rank(spectrum(linear, grams[name] if grams else None), rank, ratio, energy)
        if r * (linear.in_features + linear.out_features) >= linear.in_features * linear.out_features:
            decided[name] = f"dense (rank {r} would not be smaller)"
            continue
        ranks[name] = r
        decided[name] = r
    result = TextClassifier(replace(model.config, low_rank={**model.config.low_rank, **ranks}))
    state = {k: v for k, v in model.state_dict().items()
             if not any(k.startswith(name + ".") for name in ranks)}
    for name, r in ranks.items():
        gram = grams[name] if grams else None
        for key, value in factorize_linear(model.get_submodule(name), r, gram).state_dict().items():
            state[f"{name}.{key}"] = value
    result.load_state_dict(state)
    return result.eval(), decided


def apply_low_rank(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `low_rank` step: the chosen linears replaced by truncated-SVD factor pairs (fitted to their
    weights or their inputs), or an LSTM/GRU's W_ih/W_hh factorised; then recovery. Returns (model, details)."""
    details = {"fit": args["fit"]}
    if model.kind == "recurrent":
        if args["fit"] != "weights":
            raise RecipeError("low_rank", "fit: activations is for transformer linears", "use fit: weights on an LSTM/GRU")
        from textcompress.techniques.recurrent import low_rank_recurrent
        factored, decided = low_rank_recurrent(
            model, args["modules"], lambda s: choose_rank(s, args["rank"], args["ratio"], args["energy"]))
    else:
        grams = None
        if args["fit"] == "activations":
            from textcompress.deploy.quantization import calibration_batches

            names = [n for n in target_names(model, args["modules"]) if isinstance(model.get_submodule(n), nn.Linear)]
            grams = input_grams(model, names, calibration_batches(ctx.train, args["calibration"], seed=ctx.seed))
            details["calibration_sentences"] = min(args["calibration"], len(ctx.train))
        factored, decided = low_rank(model, args["modules"], args["rank"], args["ratio"], args["energy"], grams)
    details.update(ranks=decided, params_before=count_parameters(model), params_after=count_parameters(factored))
    details["history"] = recover(factored, ctx, args, desc="low_rank recovery")
    return factored, details


def factorize_embedding(model: TextClassifier, size: int, row_weights: torch.Tensor | None = None) -> TextClassifier:
    """Vocabulary × E and E × hidden from the table's top-E right singular directions; with
    `row_weights` (one per word piece), those of the rows weighted by √weight, so the E
    directions minimise Σ weight·‖row − its rank-E image‖²."""
    if model.config.embedding_size:
        raise RecipeError("factorize_embedding", "the embedding is already factorised", "keep one factorize_embedding step")
    hidden = model.embeddings.word_embeddings.embedding_dim  # hidden_size, or ELECTRA's embedding width
    if not 1 <= size < hidden:
        raise RecipeError("factorize_embedding", f"size={size} must be below the hidden size {hidden}",
                          f"use a size from 1 to {hidden - 1}")
    table = model.embeddings.word_embeddings.weight.detach().double()  # vocabulary × hidden
    weighted = table if row_weights is None else row_weights.double().sqrt()[:, None] * table
    directions = torch.linalg.svd(weighted, full_matrices=False).Vh[:size]  # E × hidden, orthonormal rows
    result = copy.deepcopy(model)
    result.config = replace(model.config, embedding_size=size)
    result.embeddings.word_embeddings = nn.Embedding(table.shape[0], size)
    result.embeddings.word_embeddings.weight.data = (table @ directions.T).float()  # each row's coordinates
    result.embeddings.word_projection = nn.Linear(size, hidden, bias=False)
    result.embeddings.word_projection.weight.data = directions.T.float().contiguous()
    return result


def apply_factorize_embedding(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `factorize_embedding` step: the word-piece table as vocabulary × size and size × hidden
    factors from its (optionally frequency-weighted) SVD; then recovery. Returns (model, details)."""
    table = model.embeddings.word_embeddings.weight.detach().double()
    counts = torch.from_numpy(token_counts(ctx.train, table.shape[0]).astype(np.float64))
    weights = counts + 1 if args["fit"] == "frequency" else None
    result = factorize_embedding(model, args["size"], weights)
    rebuilt = result.embeddings.word_projection(result.embeddings.word_embeddings.weight).detach().double()
    error = ((table - rebuilt) ** 2).sum(1)
    # Energy kept over the table, and over the pieces as the training data uses them.
    kept = float(1 - error.sum() / (table ** 2).sum())
    kept_in_use = float(1 - (counts * error).sum() / (counts * (table ** 2).sum(1)).sum().clamp_min(1e-12))
    details = {"embedding_size": args["size"], "fit": args["fit"], "spectral_energy_kept": round(kept, 4),
               "energy_kept_in_training_tokens": round(kept_in_use, 4),
               "params_before": count_parameters(model), "params_after": count_parameters(result)}
    details["history"] = recover(result, ctx, args, desc="factorize_embedding recovery")
    return result, details


RECURRENT_MODULES = ("input", "hidden", "recurrent")


def _check_low_rank(given: dict, kind: str):
    if sum(bool(given.get(k)) for k in ("rank", "ratio", "energy")) != 1:
        return "give exactly one of rank, ratio or energy", "e.g. `{low_rank: {modules: ffn, energy: 0.9}}`"
    modules = given.get("modules", "ffn")
    if kind == "transformer" and modules in RECURRENT_MODULES:
        return f"modules: {modules} applies to LSTM/GRU models", "use ffn, attention or all"
    if kind == "recurrent" and modules not in RECURRENT_MODULES:
        return f"modules: {modules} names transformer layers", "use input (W_ih), hidden (W_hh) or recurrent (both)"
    return None


TECHNIQUES = (
    Technique(
        "factorize_embedding", "tensor_decomposition",
        # fit: weights (plain SVD of the table) or frequency (rows weighted by training use).
        defaults={"size": 128, "fit": "weights", **RECOVERY},
        choices={"fit": ("weights", "frequency")},
        bounds={"size": (1, None)},
        apply=apply_factorize_embedding,
    ),
    Technique(
        "low_rank", "tensor_decomposition",
        # fit: weights (plain SVD) or activations (fit each layer's outputs on `calibration` training sentences).
        # modules: ffn, attention, all (transformers); input (W_ih), hidden (W_hh), recurrent (both) for LSTM/GRU.
        defaults={"modules": "ffn", "rank": 0, "ratio": 0.0, "energy": 0.0, "fit": "weights", "calibration": 512,
                  **RECOVERY},
        choices={"modules": ("ffn", "attention", "all", *RECURRENT_MODULES), "fit": ("weights", "activations")},
        bounds={"rank": (0, None), "ratio": (0, 1), "energy": (0, 1), "calibration": (1, None)},
        models=("transformer", "recurrent"), check=_check_low_rank, apply=apply_low_rank,
    ),
)
