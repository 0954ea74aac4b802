"""Pruning that removes structure, and unstructured pruning reported honestly.

- `prune_structured`: attention heads and FFN neurons scored by gradient importance
  (Michel et al., 2019: |∂loss/∂gate| of a multiplier on each head's or neuron's output),
  the lowest removed globally or per layer, and **physically cut out** of Q/K/V/O and the
  FFN matrices, so the exported ONNX model is smaller and faster. Heads per layer may end
  up uneven; every layer keeps at least one head and one neuron.
- `drop_layers`: remove whole layers (top, bottom, alternate, or the least important).
- `prune_magnitude`: unstructured, smallest weights zeroed to a target sparsity, globally or
  per layer, one-shot or on a cubic schedule during fine-tuning (Zhu & Gupta, 2017).
- `prune_movement`: first-order movement pruning (Sanh et al., 2020): a weight's score
  accumulates −w·∂L/∂w during fine-tuning (weights moving towards zero lose), the lowest
  scores are masked on the cubic schedule, and masked weights keep receiving gradients
  (straight-through), so a weight can come back while the mask is still moving. With
  `block: [rows, cols]` whole blocks are scored (the sum of their weights' scores) and masked
  (Lagunas et al., 2021); FFN neurons and attention heads whose blocks all empty out are then
  removed for real (`remove_emptied_structure`), which makes the model smaller and faster.
Unstructured zeros leave dense matrices: ONNX Runtime does not run faster, only the compressed
file is smaller.

On an LSTM/GRU model (textcompress/techniques/recurrent.py): `prune_structured: {units: f}`
removes hidden units, `drop_layers: {strategy: top}` keeps the first layers, and
`prune_magnitude` zeroes the recurrent weight matrices.

Every step ends with a recovery fine-tune against the teacher (`recovery.recover`).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from textcompress.data import length_bucketed_batches, pad_batch
from textcompress.errors import RecipeError
from textcompress.models.encoder import TextClassifier, count_parameters
from textcompress.techniques.base import FRACTION_BELOW_ONE, RECOVERY, SCOPES, Technique
from textcompress.techniques.recovery import recover
from textcompress.training import kd_loss


# ---------------------------------------------------------------------------
# Importance


def gate_importance(model: TextClassifier, split, teacher_logits, *, batches: int, batch_size: int = 32,
                    seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Accumulated |∂loss/∂gate| per head and per FFN neuron, layer by layer, over `batches`
    sampled batches. The loss is the distillation loss against the teacher's logits, so a head
    matters when removing it moves the model away from the teacher."""
    _refuse_shared(model, "importance scoring")
    layers = model.encoder.layer
    head_gates = [torch.ones(l.attention.self.num_heads, requires_grad=True) for l in layers]
    neuron_gates = [torch.ones(l.intermediate.dense.out_features, requires_grad=True) for l in layers]
    for layer, hg, ng in zip(layers, head_gates, neuron_gates):
        layer.attention.self.head_gate, layer.intermediate.neuron_gate = hg, ng
    soft = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
    head_scores = [torch.zeros_like(g) for g in head_gates]
    neuron_scores = [torch.zeros_like(g) for g in neuron_gates]
    was_training = model.training
    model.eval()  # no dropout: scores should measure the weights, not the noise
    try:
        order = length_bucketed_batches([len(x) for x in split.input_ids], batch_size, shuffle=True, seed=seed)
        for index in order[:batches]:
            ids, mask = pad_batch([split.input_ids[i] for i in index])
            loss = kd_loss(model(ids, mask), soft[index], torch.from_numpy(split.labels[index]), 2.0, 0.5)
            grads = torch.autograd.grad(loss, head_gates + neuron_gates)
            for acc, g in zip(head_scores + neuron_scores, grads):
                acc += g.abs()
    finally:
        for layer in layers:
            layer.attention.self.head_gate = layer.intermediate.neuron_gate = None
        model.train(was_training)
    # Michel et al. normalise head scores per layer (L2), which makes global ranking fair.
    head_scores = [s / s.norm().clamp(min=1e-12) for s in head_scores]
    return head_scores, neuron_scores


def choose_kept(scores: list[torch.Tensor], remove: float, scope: str, round_to: int = 1) -> list[list[int]]:
    """Indices to keep per layer after removing the fraction `remove` of all units with the lowest
    scores (scope `global`: across layers; `layer`: the same fraction from each layer). Every
    layer keeps at least one unit; with `round_to` > 1 a layer's kept count is rounded up to a
    multiple of it (matrix kernels like round sizes), never above its current count."""
    if not 0.0 <= remove < 1.0:
        raise RecipeError(None, f"the fraction to remove must be in [0, 1), got {remove}", "use a fraction below 1, e.g. 0.5")
    counts = [len(s) for s in scores]
    if scope == "global":
        flat = torch.cat(scores)
        n_remove = int(round(remove * len(flat)))
        threshold_order = flat.argsort()[:n_remove]
        removed = torch.zeros(len(flat), dtype=torch.bool)
        removed[threshold_order] = True
        keep_counts, start = [], 0
        for n in counts:
            keep_counts.append(int((~removed[start:start + n]).sum()))
            start += n
    elif scope == "layer":
        keep_counts = [n - int(round(remove * n)) for n in counts]
    else:
        raise RecipeError(None, f"scope must be global or layer, got {scope!r}", "use scope: global or scope: layer")
    kept = []
    for s, n, k in zip(scores, counts, keep_counts):
        k = max(1, k)
        if round_to > 1:
            k = min(n, -(-k // round_to) * round_to)
        kept.append(sorted(s.argsort(descending=True)[:k].tolist()))
    return kept


# ---------------------------------------------------------------------------
# Physical removal


def _rows(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    out = nn.Linear(linear.in_features, len(index))
    out.weight.data = linear.weight.data[index].clone()
    out.bias.data = linear.bias.data[index].clone()
    return out


def _columns(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    out = nn.Linear(len(index), linear.out_features)
    out.weight.data = linear.weight.data[:, index].clone()
    out.bias.data = linear.bias.data.clone()
    return out


def remove_heads_and_neurons(model: TextClassifier, keep_heads: list[list[int]],
                             keep_neurons: list[list[int]]) -> TextClassifier:
    """A new, smaller model computing exactly what `model` computes with the other heads' and
    neurons' outputs multiplied by zero."""
    _refuse_shared(model, "structured pruning")
    config = replace(model.config, layer_heads=[len(h) for h in keep_heads],
                     layer_ffn=[len(n) for n in keep_neurons])
    pruned = copy.deepcopy(model)
    pruned.config = config
    d = config.head_dim
    for layer, heads, neurons in zip(pruned.encoder.layer, keep_heads, keep_neurons):
        attn = layer.attention.self
        rows = torch.tensor([h * d + i for h in heads for i in range(d)], dtype=torch.long)
        attn.query, attn.key, attn.value = (_rows(m, rows) for m in (attn.query, attn.key, attn.value))
        attn.num_heads = len(heads)  # Performer's random features act per head dimension: nothing to cut
        layer.attention.output.dense = _columns(layer.attention.output.dense, rows)
        cols = torch.tensor(neurons, dtype=torch.long)
        layer.intermediate.dense = _rows(layer.intermediate.dense, cols)
        layer.output.dense = _columns(layer.output.dense, cols)
    return pruned


def _refuse_shared(model: TextClassifier, what: str) -> None:
    if model.config.shared_layers or model.config.low_rank:
        raise RecipeError(None, f"{what} works on a model without shared layers or low-rank factors",
                          "put pruning steps before sharing and decomposition steps in the recipe")


def apply_prune_structured(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `prune_structured` step: the least important heads and FFN neurons (or an LSTM/GRU's
    hidden units) cut out of the matrices; then recovery. Returns (smaller model, details)."""
    if model.kind == "recurrent":
        from textcompress.techniques.recurrent import apply_prune_units
        return apply_prune_units(model, args, ctx)
    heads, neurons = gate_importance(model, ctx.train, ctx.teacher_logits, batches=args["importance_batches"],
                                     batch_size=args["batch_size"], seed=ctx.seed)
    keep_heads = choose_kept(heads, args["heads"], args["scope"])
    keep_neurons = choose_kept(neurons, args["ffn"], args["scope"], round_to=args["round_to"])
    pruned = remove_heads_and_neurons(model, keep_heads, keep_neurons)
    details = {"layer_heads_before": model.config.layer_heads, "layer_heads": pruned.config.layer_heads,
               "layer_ffn_before": model.config.layer_ffn, "layer_ffn": pruned.config.layer_ffn,
               "heads_kept": keep_heads, "params_before": count_parameters(model), "params_after": count_parameters(pruned)}
    details["history"] = recover(pruned, ctx, args, desc="prune_structured recovery")
    return pruned, details


# ---------------------------------------------------------------------------
# Layer dropping


def student_from_teacher(teacher: TextClassifier, teacher_layers: list[int]) -> TextClassifier:
    """A shallower copy of the teacher: same embeddings and head, the chosen layers in order.
    Before training it computes exactly what those teacher layers compute."""
    config = replace(teacher.config, num_layers=len(teacher_layers),
                     layer_heads=[teacher.config.layer_heads[i] for i in teacher_layers],
                     layer_ffn=[teacher.config.layer_ffn[i] for i in teacher_layers])
    student = TextClassifier(config)
    student.embeddings.load_state_dict(teacher.embeddings.state_dict())
    for head in ("pooler", "classifier"):
        if getattr(teacher, head) is not None:
            getattr(student, head).load_state_dict(getattr(teacher, head).state_dict())
    for target, source in zip(student.encoder.layer, teacher_layers):
        target.load_state_dict(teacher.encoder.layer[source].state_dict())
    return student


def layers_to_keep(model: TextClassifier, keep: int, strategy: str, ctx=None, batches: int = 16) -> list[int]:
    n = model.config.num_layers
    if not 1 <= keep <= n:
        raise RecipeError("drop_layers", f"keep={keep} must be between 1 and the model's {n} layers", f"use keep: 1 to {n}")
    if strategy == "top":  # drop the top layers (Sajjad et al.: the least harmful for fine-tuned BERT)
        return list(range(keep))
    if strategy == "bottom":
        return list(range(n - keep, n))
    if strategy == "alternate":  # spread evenly, always keeping the first and the last layer
        return sorted({round(i * (n - 1) / max(1, keep - 1)) for i in range(keep)}) if keep > 1 else [0]
    if strategy == "importance":  # drop the layers whose removal alone costs least distillation loss
        costs = []
        for dropped in range(n):
            trial = student_from_teacher(model, [i for i in range(n) if i != dropped])
            costs.append(_kd_loss_on_batches(trial, ctx, batches))
        return sorted(sorted(range(n), key=lambda i: costs[i], reverse=True)[:keep])
    raise RecipeError("drop_layers", f"unknown strategy {strategy!r}", "use strategy: top, bottom, alternate or importance")


@torch.no_grad()
def _kd_loss_on_batches(model, ctx, batches: int) -> float:
    model.eval()
    order = length_bucketed_batches([len(x) for x in ctx.train.input_ids], 32, shuffle=True, seed=ctx.seed)
    soft = torch.from_numpy(np.asarray(ctx.teacher_logits, dtype=np.float32))
    total = 0.0
    for index in order[:batches]:
        ids, mask = pad_batch([ctx.train.input_ids[i] for i in index])
        total += float(kd_loss(model(ids, mask), soft[index], torch.from_numpy(ctx.train.labels[index]), 2.0, 0.5))
    return total / max(1, min(batches, len(order)))


def apply_drop_layers(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `drop_layers` step: keep `keep` layers chosen by `strategy`; then recovery.
    Returns (shallower model, details)."""
    if model.kind == "recurrent":
        from textcompress.techniques.recurrent import keep_bottom_layers
        kept, student = list(range(args["keep"])), keep_bottom_layers(model, args["keep"])
    else:
        kept = layers_to_keep(model, args["keep"], args["strategy"], ctx, args["importance_batches"])
        student = student_from_teacher(model, kept)
    details = {"layers_kept": kept, "strategy": args["strategy"], "params_before": count_parameters(model),
               "params_after": count_parameters(student)}
    details["history"] = recover(student, ctx, args, desc="drop_layers recovery")
    return student, details


# ---------------------------------------------------------------------------
# Unstructured magnitude pruning


def layer_prefix(model: nn.Module) -> str:
    return "layers." if model.kind == "recurrent" else "encoder.layer."


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The encoder's (or the recurrent layers') weight matrices: where the compute is.
    Embeddings, LayerNorms, biases and the head stay dense."""
    return {name: p for name, p in model.named_parameters()
            if name.startswith(layer_prefix(model)) and "weight" in name.rsplit(".", 1)[-1] and p.ndim == 2}


def keep_masks(scores: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Boolean masks keeping the highest scores: exactly the `sparsity` fraction dropped, across all
    matrices (`global`) or from each (`layer`); ties are broken by position, never all pruned."""
    def top(flat: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        kept = flat.numel() - int(sparsity * flat.numel())
        if kept > 0:
            keep[torch.topk(flat, kept, sorted=False).indices] = True
        return keep

    if scope == "global":
        flat = torch.cat([s.detach().flatten() for s in scores.values()])
        keep, masks, start = top(flat), {}, 0
        for n, s in scores.items():
            masks[n] = keep[start:start + s.numel()].view_as(s)
            start += s.numel()
        return masks
    if scope == "layer":
        return {n: top(s.detach().flatten()).view_as(s) for n, s in scores.items()}
    raise RecipeError(None, f"scope must be global or layer, got {scope!r}", "use scope: global or scope: layer")


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Boolean keep-masks zeroing the `sparsity` fraction of smallest |w|, globally or per matrix."""
    return keep_masks({n: w.detach().abs() for n, w in weights.items()}, sparsity, scope)


def cubic_sparsity(step: int, total: int, final: float, start_fraction: float = 0.0, end_fraction: float = 0.7) -> float:
    """Zhu & Gupta's schedule: sparsity rises fast then levels off, reaching `final` at
    `end_fraction` of training so that the last steps recover at the final sparsity."""
    begin, end = start_fraction * total, max(1.0, end_fraction * total)
    if step <= begin:
        return 0.0
    progress = min(1.0, (step - begin) / max(1.0, end - begin))
    return final * (1.0 - (1.0 - progress) ** 3)


def sparsity_report(model: TextClassifier) -> dict:
    weights = prunable_weights(model)
    zeros = {n: int((w == 0).sum()) for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    per_layer = {}
    for i in range(model.config.num_layers):
        names = [n for n in weights if n.startswith(f"{layer_prefix(model)}{i}.")]
        count = sum(weights[n].numel() for n in names)
        per_layer[i] = round(sum(zeros[n] for n in names) / max(1, count), 4)
    return {"sparsity": round(sum(zeros.values()) / max(1, total), 4), "per_layer_sparsity": per_layer,
            "pruned_weights": sum(zeros.values()), "prunable_weights": total}


def apply_prune_magnitude(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `prune_magnitude` step: the smallest weights zeroed to `sparsity`, one-shot or on a cubic
    schedule during the recovery fine-tune. Returns (model with zeros, details)."""
    pruned = copy.deepcopy(model)
    weights = prunable_weights(pruned)
    masks: dict[str, torch.Tensor] = {}

    def apply_masks():
        with torch.no_grad():
            for n, w in weights.items():
                w.mul_(masks[n].to(w.device))

    def step_hook(step: int, total: int):
        target = args["sparsity"] if args["schedule"] == "oneshot" else cubic_sparsity(step, total, args["sparsity"])
        if step == 1 or step % args["frequency"] == 0 or step == total:
            masks.update(magnitude_masks(weights, target, args["scope"]))
        apply_masks()

    if args["schedule"] == "oneshot" or args["epochs"] <= 0:
        masks.update(magnitude_masks(weights, args["sparsity"], args["scope"]))
        apply_masks()
    history = recover(pruned, ctx, args, desc="prune_magnitude", step_hook=step_hook)
    # The final masks at the target sparsity, whatever the schedule left.
    masks.update(magnitude_masks(weights, args["sparsity"], args["scope"]))
    apply_masks()
    details = {**sparsity_report(pruned), "schedule": args["schedule"], "scope": args["scope"], "history": history,
               "note": "unstructured zeros: the ONNX matrices stay dense, so ONNX Runtime is not faster; "
                       "only the compressed file shrinks"}
    return pruned, details


# ---------------------------------------------------------------------------
# Movement pruning


class _StraightThroughMask(torch.autograd.Function):
    """w ⊙ mask forward; the gradient passes to every w, masked or not (Sanh et al.'s estimator)."""

    @staticmethod
    def forward(ctx, weight, mask):
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class MovementMask(nn.Module):
    """A parametrization: the layer computes with its weight masked; the dense weight trains on."""

    def __init__(self, shape):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape))

    def forward(self, weight):
        return _StraightThroughMask.apply(weight, self.mask)


def block_sums(score: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Sum of `score` over each (rows x cols) block; edge blocks of a matrix that does not divide are partial."""
    rows, cols = block
    padded = nn.functional.pad(score, (0, -score.shape[1] % cols, 0, -score.shape[0] % rows))
    return padded.view(padded.shape[0] // rows, rows, padded.shape[1] // cols, cols).sum(dim=(1, 3))


def expand_blocks(block_mask: torch.Tensor, block: tuple[int, int], shape: torch.Size) -> torch.Tensor:
    return block_mask.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:shape[0], :shape[1]]


def remove_emptied_structure(model: TextClassifier) -> tuple[TextClassifier, dict]:
    """Cut out the FFN neurons and attention heads whose weights pruning emptied, exactly:
    - a neuron whose output column is zero contributes nothing;
    - a neuron whose input row is zero outputs the constant activation(bias), folded into the next bias;
    - a head whose output-projection columns are zero contributes nothing;
    - a head whose value rows are zero attends over a constant (its value bias), folded likewise.
    Every layer keeps at least one head and one neuron."""
    keep_heads, keep_neurons = [], []
    d = model.config.head_dim
    with torch.no_grad():
        for layer in model.encoder.layer:
            up, down = layer.intermediate.dense, layer.output.dense
            dead_in = (up.weight == 0).all(dim=1)
            dead = dead_in | (down.weight == 0).all(dim=0)
            folded = dead_in & ~(down.weight == 0).all(dim=0)
            down.bias += down.weight[:, folded] @ layer.intermediate.activation(up.bias[folded])
            neurons = torch.nonzero(~dead).flatten().tolist() or [0]
            attn, out = layer.attention.self, layer.attention.output.dense
            heads = []
            for h in range(attn.num_heads):
                cols = slice(h * d, (h + 1) * d)
                silent = bool((out.weight[:, cols] == 0).all())
                # Attention weights sum to one, except through Linformer's sequence projections.
                constant = bool((attn.value.weight[cols] == 0).all()) and attn.kind != "linformer"
                if constant and not silent:
                    out.bias += out.weight[:, cols] @ attn.value.bias[cols]
                if not (silent or constant):
                    heads.append(h)
            keep_heads.append(heads or [0])
            keep_neurons.append(neurons)
    pruned = remove_heads_and_neurons(model, keep_heads, keep_neurons)
    removed = {"layer_heads_before": model.config.layer_heads, "layer_heads": pruned.config.layer_heads,
               "layer_ffn_before": model.config.layer_ffn, "layer_ffn": pruned.config.layer_ffn}
    return pruned, removed


def apply_prune_movement(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `prune_movement` step: weights (or blocks) masked by accumulated movement scores during
    fine-tuning, then emptied heads and neurons cut out. Returns (model, details)."""
    from torch.nn.utils import parametrize

    if model.kind == "recurrent":  # params validation says so first; this guards direct calls
        raise RecipeError("prune_movement", "masks linear layers, which an LSTM/GRU model has none of",
                          "on an LSTM/GRU model use prune_magnitude")
    pruned = copy.deepcopy(model)
    names = list(prunable_weights(pruned))
    modules = {n: pruned.get_submodule(n.rsplit(".", 1)[0]) for n in names}
    for module in modules.values():
        parametrize.register_parametrization(module, "weight", MovementMask(module.weight.shape))
    dense = {n: m.parametrizations.weight.original for n, m in modules.items()}
    scores = {n: torch.zeros_like(w) for n, w in dense.items()}

    block = tuple(args["block"])

    def set_masks(sparsity: float):
        pooled = {n: block_sums(s, block) for n, s in scores.items()} if block != (1, 1) else scores
        for n, keep in keep_masks(pooled, sparsity, args["scope"]).items():
            keep = expand_blocks(keep, block, scores[n].shape) if block != (1, 1) else keep
            modules[n].parametrizations.weight[0].mask.copy_(keep.to(scores[n].dtype))

    def step_hook(step: int, total: int):
        with torch.no_grad():
            for n, w in dense.items():
                if w.grad is not None:
                    if scores[n].device != w.device:
                        scores[n] = scores[n].to(w.device)
                    scores[n] -= w.grad * w  # first-order: moving away from zero raises the score
            if step % args["frequency"] == 0 or step == total:
                set_masks(cubic_sparsity(step, total, args["sparsity"]))

    history = recover(pruned, ctx, args, desc="prune_movement", step_hook=step_hook)
    with torch.no_grad():
        for n in scores:
            scores[n] = scores[n].to("cpu")
        set_masks(args["sparsity"])
    for module in modules.values():  # bake w ⊙ mask into a plain weight
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    details = {**sparsity_report(pruned), "scope": args["scope"], "block": list(block), "history": history}
    if block == (1, 1):
        details["note"] = ("unstructured zeros: the ONNX matrices stay dense, so ONNX Runtime is not faster; "
                           "only the compressed file shrinks")
        return pruned, details
    params_before = count_parameters(pruned)
    pruned, removed = remove_emptied_structure(pruned)
    details.update(removed, params_before=params_before, params_after=count_parameters(pruned),
                   sparsity_after_removal=sparsity_report(pruned)["sparsity"],
                   note="emptied heads and neurons are cut out (smaller, faster); the zero blocks left in the "
                        "kept matrices stay dense in ONNX and only shrink the compressed file")
    return pruned, details


# ---------------------------------------------------------------------------
# The declarations


def _check_structured(given: dict, kind: str):
    if kind == "transformer":
        if given.get("units"):
            return "units applies to LSTM/GRU models", "prune a transformer with heads and ffn"
        return None
    if given.get("heads") is not None or given.get("ffn") is not None:
        return "heads and ffn apply to transformers", "prune an LSTM/GRU's hidden units with units: 0.5"
    if not given.get("units"):
        return "an LSTM/GRU is pruned by hidden units", "set units, the fraction to remove (e.g. 0.5)"
    return None


def _check_drop_layers(given: dict, kind: str):
    if kind == "recurrent" and given.get("strategy", "top") != "top":
        return "an LSTM/GRU keeps its first layers (the first reads the embedding)", "use strategy: top"
    return None


def _check_movement(given: dict, kind: str):
    block = given.get("block")
    if block is not None and not (len(block) == 2 and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        return f"block={block!r} must be two whole numbers ≥ 1", "e.g. `block: [32, 32]`, or [1, 1] for single weights"
    return None


TECHNIQUES = (
    Technique(
        "prune_structured", "pruning",
        # heads, ffn: fractions removed from a transformer; units: from every direction of an LSTM/GRU.
        defaults={"heads": 0.5, "ffn": 0.5, "units": 0.0, "scope": "global", "round_to": 16, "importance_batches": 64,
                  **RECOVERY},
        choices={"scope": SCOPES},
        bounds={"heads": FRACTION_BELOW_ONE, "ffn": FRACTION_BELOW_ONE, "units": FRACTION_BELOW_ONE,
                "round_to": (1, None), "importance_batches": (1, None)},
        models=("transformer", "recurrent"), check=_check_structured, apply=apply_prune_structured,
    ),
    Technique(
        "drop_layers", "pruning",
        defaults={"keep": 3, "strategy": "top", "importance_batches": 16, **RECOVERY},
        choices={"strategy": ("top", "bottom", "alternate", "importance")},
        bounds={"keep": (1, None), "importance_batches": (1, None)},
        models=("transformer", "recurrent"), check=_check_drop_layers, apply=apply_drop_layers,
    ),
    Technique(
        "prune_magnitude", "pruning",
        defaults={"sparsity": 0.8, "scope": "global", "schedule": "cubic", "frequency": 50, **RECOVERY},
        choices={"scope": SCOPES, "schedule": ("cubic", "oneshot")},
        bounds={"sparsity": FRACTION_BELOW_ONE, "frequency": (1, None)},
        models=("transformer", "recurrent"), apply=apply_prune_magnitude,
    ),
    Technique(
        "prune_movement", "pruning",
        # block: [rows, cols] scored and masked together ([1, 1]: single weights); emptied heads
        # and FFN neurons are then cut out.
        defaults={"sparsity": 0.8, "scope": "global", "frequency": 50, "block": [1, 1], **RECOVERY},
        choices={"scope": SCOPES},
        bounds={"sparsity": FRACTION_BELOW_ONE, "frequency": (1, None)},
        check=_check_movement, apply=apply_prune_movement,
    ),
)
