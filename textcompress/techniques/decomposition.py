"""Tensor decomposition: truncated SVD of linear layers, and ALBERT's factorised embedding.

- `low_rank`: each chosen `nn.Linear` W (out × in) becomes up·down with rank r, initialised from
  the SVD W = U S Vᵀ (down = √S·Vᵀ[:r], up = U[:, :r]·√S, the bias kept). The rank is fixed, a
  ratio of min(in, out), or the smallest keeping a fraction of the spectral energy Σσ². A layer
  whose factorised form would not be smaller (r·(in + out) ≥ in·out) is left dense: fewer
  multiply-adds is also what makes it faster.
- `factorize_embedding`: the vocabulary × hidden table becomes vocabulary × E and E × hidden,
  from the SVD of the teacher's table.
Both end with a recovery fine-tune against the teacher. On an LSTM/GRU model, `low_rank` with
`modules: input | hidden | recurrent` factorises W_ih, W_hh or both (techniques/recurrent.py).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from textcompress.modeling import LowRankLinear, TextClassifier, count_parameters
from textcompress.techniques.distillation import recover

TARGETS = {"attention": (".attention.self.query", ".attention.self.key", ".attention.self.value", ".attention.output.dense"),
           "ffn": (".intermediate.dense", ".output.dense")}


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
    raise ValueError("low_rank: give one of rank, ratio or energy")


def factorize_linear(linear: nn.Linear, r: int) -> LowRankLinear:
    u, s, vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)
    root = s[:r].sqrt()
    factored = LowRankLinear(linear.in_features, linear.out_features, r)
    factored.down.weight.data = (root[:, None] * vh[:r]).float()
    factored.up.weight.data = (u[:, :r] * root[None, :]).float()
    factored.up.bias.data = linear.bias.detach().clone()
    return factored


def target_names(model: TextClassifier, modules: str) -> list[str]:
    suffixes = TARGETS["attention"] + TARGETS["ffn"] if modules == "all" else TARGETS[modules]
    return [f"encoder.layer.{i}{suffix}" for i in range(model.config.num_layers) for suffix in suffixes]


def low_rank(model: TextClassifier, modules: str = "ffn", rank: int = 0, ratio: float = 0.0,
             energy: float = 0.0) -> tuple[TextClassifier, dict]:
    """A copy with the chosen linears factorised; returns it and {module: rank, or "dense (why)"}."""
    if model.config.shared_layers:
        raise ValueError("low_rank: put decomposition before sharing in the recipe")
    decided, ranks = {}, {}
    for name in target_names(model, modules):
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            continue  # already factorised by an earlier step
        s = torch.linalg.svdvals(linear.weight.detach().double())
        r = choose_rank(s, rank, ratio, energy)
        if r * (linear.in_features + linear.out_features) >= linear.in_features * linear.out_features:
            decided[name] = f"dense (rank {r} would not be smaller)"
            continue
        ranks[name] = r
        decided[name] = r
    result = TextClassifier(replace(model.config, low_rank={**model.config.low_rank, **ranks}))
    state = {k: v for k, v in model.state_dict().items()
             if not any(k.startswith(name + ".") for name in ranks)}
    for name, r in ranks.items():
        for key, value in factorize_linear(model.get_submodule(name), r).state_dict().items():
            state[f"{name}.{key}"] = value
    result.load_state_dict(state)
    return result.eval(), decided


def apply_low_rank(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    from textcompress.modeling_rnn import RecurrentClassifier

    if isinstance(model, RecurrentClassifier):
        from textcompress.techniques.recurrent import low_rank_recurrent
        factored, decided = low_rank_recurrent(
            model, args["modules"], lambda s: choose_rank(s, args["rank"], args["ratio"], args["energy"]))
    else:
        factored, decided = low_rank(model, args["modules"], args["rank"], args["ratio"], args["energy"])
    details = {"ranks": decided, "params_before": count_parameters(model), "params_after": count_parameters(factored)}
    details["history"] = recover(factored, ctx, args, desc="low_rank recovery")
    return factored, details


def factorize_embedding(model: TextClassifier, size: int) -> TextClassifier:
    if model.config.embedding_size:
        raise ValueError("factorize_embedding: the embedding is already factorised")
    hidden = model.config.hidden_size
    if not 1 <= size < hidden:
        raise ValueError(f"factorize_embedding: size={size} must be below the hidden size {hidden}")
    table = model.embeddings.word_embeddings.weight.detach().double()  # vocabulary × hidden
    u, s, vh = torch.linalg.svd(table, full_matrices=False)
    result = copy.deepcopy(model)
    result.config = replace(model.config, embedding_size=size)
    result.embeddings.word_embeddings = nn.Embedding(table.shape[0], size)
    result.embeddings.word_embeddings.weight.data = (u[:, :size] * s[:size]).float()
    result.embeddings.word_projection = nn.Linear(size, hidden, bias=False)
    result.embeddings.word_projection.weight.data = vh[:size].T.float().contiguous()
    return result


def apply_factorize_embedding(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    result = factorize_embedding(model, args["size"])
    s = torch.linalg.svdvals(model.embeddings.word_embeddings.weight.detach().double())
    kept = float((s[: args["size"]] ** 2).sum() / (s ** 2).sum())
    details = {"embedding_size": args["size"], "spectral_energy_kept": round(kept, 4),
               "params_before": count_parameters(model), "params_after": count_parameters(result)}
    details["history"] = recover(result, ctx, args, desc="factorize_embedding recovery")
    return result, details
