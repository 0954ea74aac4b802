"""The compression families applied to LSTM/GRU classifiers (textcompress/models/recurrent.py).

The recipe steps are the transformers' (`prune_structured`, `drop_layers`, `low_rank`,
`share_layers`, ...); their `apply_*` functions hand a recurrent model to the functions here.

- Hidden units (`prune_structured: {units: f}`): each direction's units are scored by
  first-order importance, |Σ h·∂L/∂h| summed over tokens and batches (a gate of ones on
  the layer's output, as for heads), and the lowest removed from every direction alike.
  A unit whose gate rows are all zero outputs exactly zero at every step (LSTM: c and h stay 0;
  GRU: h stays 0), so removing its rows from W_ih, W_hh and the biases, its columns from W_hh,
  from the next layer's W_ih and from the head computes the same function, only smaller.
- Low rank (`low_rank: {modules: input | hidden | recurrent}`): W_ih and/or W_hh of every
  direction as two SVD factors (FactorizedRNN); a matrix whose factors would not be smaller
  stays dense.
- Sharing (`share_layers: {share: directions}`): the backward direction runs the forward
  direction's weights (one module, stored and exported once).
- Layer dropping (`drop_layers: {strategy: top}`): the first `keep` layers stay.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from textcompress.data import length_bucketed_batches, pad_batch
from textcompress.errors import RecipeError
from textcompress.models.encoder import count_parameters
from textcompress.models.recurrent import GATES, FactorizedRNN, RecurrentClassifier
from textcompress.techniques.recovery import recover
from textcompress.training import kd_loss

DIRECTIONS = ("forward", "backward")


def direction_modules(model: RecurrentClassifier) -> dict[str, nn.Module]:
    """"layers.{i}.{forward|backward}_rnn" -> its LSTM/GRU (or FactorizedRNN), per distinct module."""
    found, seen = {}, set()
    for i, layer in enumerate(model.layers):
        for d in DIRECTIONS:
            module = getattr(layer, f"{d}_rnn")
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                found[f"layers.{i}.{d}_rnn"] = module
    return found


def dense_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """A direction's W_ih, W_hh, b_ih, b_hh as dense tensors, whatever its form."""
    if isinstance(module, FactorizedRNN):
        w_ih = module.weight_ih @ module.input_down.weight if module.input_down is not None else module.weight_ih
        return {"weight_ih": w_ih.detach(), "weight_hh": module.recurrent_weight().detach(),
                "bias_ih": module.bias_ih.detach(), "bias_hh": module.bias_hh.detach()}
    return {name: getattr(module, f"{name}_l0").detach() for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def _refuse_compressed(model: RecurrentClassifier, what: str) -> None:
    if model.config.ranks or model.config.tied_directions:
        raise RecipeError(None, f"{what} works on a recurrent model without low-rank factors or tied directions",
                          "put it before low_rank and share_layers in the recipe")


# ---------------------------------------------------------------------------
# Hidden units


def unit_importance(model: RecurrentClassifier, split, teacher_logits, *, batches: int, batch_size: int = 32,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Direction -> |Σ h·∂L/∂h| per hidden unit, over `batches` sampled batches; the loss is the
    distillation loss against the teacher's logits."""
    _refuse_compressed(model, "hidden-unit scoring")
    h = model.config.hidden_size
    gates = [torch.ones(model.config.output_size, requires_grad=True) for _ in model.layers]
    hooks = [layer.register_forward_hook(lambda module, inputs, out, g=g: out * g)
             for layer, g in zip(model.layers, gates)]
    scores = [torch.zeros_like(g) for g in gates]
    soft = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
    was_training = model.training
    model.eval()
    try:
        order = length_bucketed_batches([len(x) for x in split.input_ids], batch_size, shuffle=True, seed=seed)
        for index in order[:batches]:
            ids, mask = pad_batch([split.input_ids[i] for i in index])
            loss = kd_loss(model(ids, mask), soft[index], torch.from_numpy(split.labels[index]), 2.0, 0.5)
            for acc, grad in zip(scores, torch.autograd.grad(loss, gates)):
                acc += grad.abs()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    result = {}
    for i, s in enumerate(scores):
        result[f"layers.{i}.forward_rnn"] = s[:h]
        if model.config.bidirectional:
            result[f"layers.{i}.backward_rnn"] = s[h:]
    return result


def units_to_keep(scores: dict[str, torch.Tensor], remove: float, round_to: int = 1) -> dict[str, list[int]]:
    """The same count of units kept in every direction (the model has one hidden size): the
    highest-scoring ones, the count rounded up to a multiple of `round_to`, at least one."""
    h = len(next(iter(scores.values())))
    k = max(1, h - int(round(remove * h)))
    if round_to > 1:
        k = min(h, -(-k // round_to) * round_to)
    return {name: sorted(s.argsort(descending=True)[:k].tolist()) for name, s in scores.items()}


def _gate_rows(cell: str, hidden: int, units: list[int]) -> torch.Tensor:
    return torch.tensor([g * hidden + u for g in range(GATES[cell]) for u in units], dtype=torch.long)


def mask_hidden_units(model: RecurrentClassifier, keep: dict[str, list[int]]) -> RecurrentClassifier:
    """A copy whose other units have all-zero gate rows: they output zero at every step."""
    _refuse_compressed(model, "masking hidden units")
    masked = copy.deepcopy(model)
    h, cell = model.config.hidden_size, model.config.cell
    for name, module in direction_modules(masked).items():
        dropped = sorted(set(range(h)) - set(keep[name]))
        rows = _gate_rows(cell, h, dropped)
        with torch.no_grad():
            for key in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(module, key)[rows] = 0.0
    return masked


def _output_columns(keep: dict[str, list[int]], layer: int, hidden: int, bidirectional: bool) -> torch.Tensor:
    """Which features of layer `layer`'s output ([forward units | backward units]) survive."""
    columns = list(keep[f"layers.{layer}.forward_rnn"])
    if bidirectional:
        columns += [hidden + u for u in keep[f"layers.{layer}.backward_rnn"]]
    return torch.tensor(columns, dtype=torch.long)


def remove_hidden_units(model: RecurrentClassifier, keep: dict[str, list[int]]) -> RecurrentClassifier:
    """A smaller model computing what `mask_hidden_units(model, keep)` computes: the units not
    kept are cut from every matrix that writes or reads them."""
    _refuse_compressed(model, "structured pruning")
    config, h = model.config, model.config.hidden_size
    counts = {len(units) for units in keep.values()}
    if len(counts) != 1:
        raise ValueError(f"every direction must keep the same number of units, got {sorted(counts)}")
    k = counts.pop()
    pruned = RecurrentClassifier(replace(config, hidden_size=k))
    state = {"word_embeddings.weight": model.word_embeddings.weight.detach().clone()}
    for i in range(config.num_layers):
        inputs = None if i == 0 else _output_columns(keep, i - 1, h, config.bidirectional)
        for d in DIRECTIONS[: 2 if config.bidirectional else 1]:
            name = f"layers.{i}.{d}_rnn"
            rows, units = _gate_rows(config.cell, h, keep[name]), torch.tensor(keep[name], dtype=torch.long)
            weights = dense_weights(model.get_submodule(name))
            w_ih = weights["weight_ih"][rows]
            state[f"{name}.weight_ih_l0"] = w_ih if inputs is None else w_ih[:, inputs]
            state[f"{name}.weight_hh_l0"] = weights["weight_hh"][rows][:, units]
            state[f"{name}.bias_ih_l0"], state[f"{name}.bias_hh_l0"] = weights["bias_ih"][rows], weights["bias_hh"][rows]
    last = _output_columns(keep, config.num_layers - 1, h, config.bidirectional)
    reader = "head.0" if config.head_size else "classifier"
    for key, value in model.state_dict().items():
        if key.startswith(("head.", "classifier.")):
            state[key] = value[:, last] if key == f"{reader}.weight" else value
    pruned.load_state_dict({k: v.contiguous() for k, v in state.items()})
    return pruned.eval()


def apply_prune_units(model: RecurrentClassifier, args: dict, ctx) -> tuple[RecurrentClassifier, dict]:
    """`prune_structured: {units: f}` on an LSTM/GRU: the least important hidden units of every
    direction removed; then recovery. Returns (smaller model, details)."""
    scores = unit_importance(model, ctx.train, ctx.teacher_logits, batches=args["importance_batches"],
                             batch_size=args["batch_size"], seed=ctx.seed)
    keep = units_to_keep(scores, args["units"], args["round_to"])
    pruned = remove_hidden_units(model, keep)
    details = {"hidden_size_before": model.config.hidden_size, "hidden_size": pruned.config.hidden_size,
               "units_kept": keep, "params_before": count_parameters(model), "params_after": count_parameters(pruned)}
    details["history"] = recover(pruned, ctx, args, desc="prune_structured recovery")
    return pruned, details


# ---------------------------------------------------------------------------
# Layer dropping


def keep_bottom_layers(model: RecurrentClassifier, keep: int) -> RecurrentClassifier:
    """The first `keep` layers and the head: the head reads the same width from any layer."""
    if not 1 <= keep <= model.config.num_layers:
        raise RecipeError("drop_layers", f"keep={keep} must be between 1 and the model's {model.config.num_layers} layers",
                          f"use keep: 1 to {model.config.num_layers}")
    result = RecurrentClassifier(replace(model.config, num_layers=keep))
    result.load_state_dict({k: v for k, v in model.state_dict().items()
                            if not k.startswith("layers.") or int(k.split(".")[1]) < keep})
    return result.eval()


# ---------------------------------------------------------------------------
# Low rank


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with up·down the best rank-`rank` approximation of `weight`, √S on each side."""
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()


def low_rank_recurrent(model: RecurrentClassifier, modules: str, choose) -> tuple[RecurrentClassifier, dict]:
    """A copy whose W_ih (`input`), W_hh (`hidden`) or both (`recurrent`) are factorised at the rank
    `choose(singular_values)` picks; returns it and {"<direction>.<matrix>": rank or "dense (why)"}."""
    if model.config.tied_directions:
        raise RecipeError("low_rank", "the model's directions are tied", "put decomposition before share_layers in the recipe")
    matrices = {"input": ("input",), "hidden": ("hidden",), "recurrent": ("input", "hidden")}[modules]
    ranks, decided = dict(model.config.ranks), {}
    dense = {name: dense_weights(module) for name, module in direction_modules(model).items()}
    for name, weights in dense.items():
        current = list(ranks.get(name, [0, 0]))
        for slot, matrix in enumerate(("input", "hidden")):
            if matrix not in matrices or current[slot]:
                continue
            w = weights["weight_ih" if matrix == "input" else "weight_hh"]
            r = choose(torch.linalg.svdvals(w.double()))
            if r * sum(w.shape) >= w.numel():
                decided[f"{name}.{matrix}"] = f"dense (rank {r} would not be smaller)"
                continue
            current[slot] = decided[f"{name}.{matrix}"] = r
        if any(current):
            ranks[name] = current
    result = RecurrentClassifier(replace(model.config, ranks=ranks))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layers.")}
    for name, weights in dense.items():
        if name not in ranks:
            state.update({f"{name}.{key}_l0": value for key, value in weights.items()})
            continue
        input_rank, hidden_rank = ranks[name]
        state[f"{name}.bias_ih"], state[f"{name}.bias_hh"] = weights["bias_ih"], weights["bias_hh"]
        if input_rank:
            state[f"{name}.weight_ih"], state[f"{name}.input_down.weight"] = svd_factors(weights["weight_ih"], input_rank)
        else:
            state[f"{name}.weight_ih"] = weights["weight_ih"]
        if hidden_rank:
            state[f"{name}.hidden_up"], state[f"{name}.hidden_down"] = svd_factors(weights["weight_hh"], hidden_rank)
        else:
            state[f"{name}.weight_hh"] = weights["weight_hh"]
    result.load_state_dict({k: v.contiguous() for k, v in state.items()})
    return result.eval(), decided


# ---------------------------------------------------------------------------
# Sharing


def tie_directions(model: RecurrentClassifier, init: str = "average") -> RecurrentClassifier:
    """A copy whose backward direction is its forward direction's module: `average` of the two
    directions' weights, or `first` (the forward weights as they are)."""
    if not model.config.bidirectional:
        raise RecipeError("share_layers", "share: directions needs a bidirectional model",
                          "use share: directions on a bidirectional LSTM/GRU only")
    if model.config.tied_directions:
        raise RecipeError("share_layers", "the directions are already tied", "keep one share_layers step in the recipe")
    if init not in ("average", "first"):
        raise RecipeError("share_layers", f"init must be average or first, got {init!r}", "use init: average or init: first")
    for i in range(model.config.num_layers):
        if model.config.ranks.get(f"layers.{i}.forward_rnn", [0, 0]) != model.config.ranks.get(f"layers.{i}.backward_rnn", [0, 0]):
            raise RecipeError("share_layers", f"layer {i}'s directions have different ranks", "tie them before low_rank")
    tied = RecurrentClassifier(replace(model.config, tied_directions=True))
    state = model.state_dict()
    own = {}
    for key, value in state.items():
        if ".backward_rnn." in key:
            continue
        if ".forward_rnn." in key and init == "average":
            value = (value + state[key.replace(".forward_rnn.", ".backward_rnn.")]) / 2
        own[key] = value
    full = dict(own)
    for key in tied.state_dict():
        if ".backward_rnn." in key:
            full[key] = own[key.replace(".backward_rnn.", ".forward_rnn.")]
    tied.load_state_dict(full)
    return tied.eval()
