"""Cross-layer parameter sharing (ALBERT, Lan et al., 2020) for a fine-tuned encoder.

Layers are split into contiguous groups; every layer of a group runs the same weights (all of
them, or only attention, or only the FFN). The shared weights start as the group's average
or as one chosen layer, then distillation from the teacher recovers what sharing cost. The
modules are tied, not copied, so the bundle and the exported ONNX store each shared weight once.

Relaxed sharing (`delta_rank: r`, after Bae et al., 2024) ties only the weight matrices: each
layer keeps its biases and LayerNorms and adds a rank-r correction to every shared linear,
initialised as the truncated SVD of what sharing took away (its own weight minus the shared
one), so at full rank the shared model computes exactly what the teacher did. `fit: activations`
fits each correction to the layer's inputs on calibration sentences, as `low_rank` does.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from textcompress.errors import RecipeError
from textcompress.models.encoder import LAYER_LINEARS, TextClassifier, count_parameters
from textcompress.techniques.decomposition import input_grams, low_rank_factors
from textcompress.techniques.base import RECOVERY, Technique
from textcompress.techniques.recovery import recover


def group_sources(num_layers: int, groups: int) -> list[int]:
    """Contiguous groups, as even as possible: layer i -> the first layer of its group."""
    if not 1 <= groups <= num_layers:
        raise RecipeError("share_layers", f"groups={groups} must be between 1 and the model's {num_layers} layers",
                          f"use groups: 1 to {num_layers}")
    bounds = [round(g * num_layers / groups) for g in range(groups + 1)]
    return [bounds[g] for g in range(groups) for _ in range(bounds[g], bounds[g + 1])]


def share_layers(model: TextClassifier, groups: int, share: str = "all", init: str = "average",
                 delta_rank: int = 0, grams: dict[str, torch.Tensor] | None = None) -> TextClassifier:
    """A copy of `model` whose layers share weights by group. `init`: `average` of the group's
    layers, or `first` (the group's first layer as it is). `delta_rank` > 0: relaxed sharing,
    each layer's correction fitted to its inputs when `grams` (from `relaxed_targets`) are given."""
    config = model.config
    if config.shared_layers and any(s != i for i, s in enumerate(config.shared_layers)):
        raise RecipeError("share_layers", "the model already shares layers", "keep one share_layers step in the recipe")
    if config.low_rank:
        raise RecipeError("share_layers", "the model has low-rank factors", "put sharing before low-rank decomposition in the recipe")
    if init not in ("average", "first"):
        raise RecipeError("share_layers", f"init must be average or first, got {init!r}", "use init: average or init: first")
    sources = group_sources(config.num_layers, groups)
    for i, s in enumerate(sources):
        if (config.layer_heads[i], config.layer_ffn[i]) != (config.layer_heads[s], config.layer_ffn[s]):
            raise RecipeError("share_layers", f"layer {i} and layer {s} have different shapes (pruned unevenly)",
                              "share before pruning, or prune per layer to equal sizes")
    shared = TextClassifier(replace(config, shared_layers=sources, share=share, share_delta_rank=delta_rank))
    state = model.state_dict()
    members = {s: [j for j, t in enumerate(sources) if t == s] for s in set(sources)}
    if delta_rank:
        state.update(_relaxed_state(state, members, share, init, delta_rank, grams or {}))
    elif init == "average":
        for s, group in members.items():
            for part_name in _part_prefixes(share):
                for key in [k for k in state if k.startswith(f"encoder.layer.{s}.{part_name}")]:
                    suffix = key[len(f"encoder.layer.{s}."):]
                    state[key] = torch.stack([state[f"encoder.layer.{j}.{suffix}"] for j in group]).mean(0)
    # Tied modules read their weights through the group's first layer: keep only what it names,
    # plus the parts that stay per layer.
    own = {k: v for k, v in state.items() if k in shared.state_dict()}
    shared.load_state_dict(_tie_view(shared, own))
    return shared.eval()


def relaxed_targets(num_layers: int, groups: int, share: str) -> list[str]:
    """The linears relaxed sharing ties: those `share` names, in layers whose group has two or more."""
    sources = group_sources(num_layers, groups)
    return [f"encoder.layer.{i}.{name}" for i, s in enumerate(sources) if sources.count(s) > 1
            for name in LAYER_LINEARS[share]]


def _relaxed_state(state: dict, members: dict[int, list[int]], share: str, init: str, rank: int,
                   grams: dict[str, torch.Tensor]) -> dict:
    """Each group leader's shared weight, and each layer's correction: the rank-r factors of its
    own weight minus the shared one (biases and LayerNorms stay the layer's own)."""
    new = {}
    for s, group in members.items():
        if len(group) < 2:
            continue
        for name in LAYER_LINEARS[share]:
            weights = [state[f"encoder.layer.{j}.{name}.weight"] for j in group]
            common = torch.stack(weights).mean(0) if init == "average" else weights[0]
            if rank > min(common.shape):
                raise RecipeError("share_layers", f"delta_rank={rank} is above the full rank {min(common.shape)} of {name}",
                                  f"use a delta_rank of at most {min(common.shape)}")
            new[f"encoder.layer.{s}.{name}.weight"] = common
            for j, own in zip(group, weights):
                prefix = f"encoder.layer.{j}.{name}"
                down, up = low_rank_factors(own - common, rank, grams.get(prefix))
                new[f"{prefix}.delta_down.weight"], new[f"{prefix}.delta_up.weight"] = down, up
    return new


def _part_prefixes(share: str) -> list[str]:
    return {"all": ["attention.", "intermediate.", "output."], "attention": ["attention."],
            "ffn": ["intermediate.", "output."]}[share]


def _tie_view(model: TextClassifier, state: dict) -> dict:
    """The state dict `model` expects, with every tied key taking its group leader's value."""
    from textcompress.models.encoder import shared_aliases

    full = dict(state)
    for alias, original in shared_aliases(model).items():
        full[alias] = state[original]
    return full


def apply_share_layers(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `share_layers` step: layers in groups tied to one weight set (optionally with rank-r
    per-layer corrections), or a BiLSTM/GRU's two directions tied; then recovery. Returns (model, details)."""
    if model.kind == "recurrent":  # a BiLSTM/GRU: both directions run one set of weights
        from textcompress.techniques.recurrent import tie_directions
        shared = tie_directions(model, args["init"])
        details = {"share": "directions", "init": args["init"]}
    else:
        grams = None
        if args["delta_rank"] and args["fit"] == "activations":
            from textcompress.deploy.quantization import calibration_batches

            names = relaxed_targets(model.config.num_layers, args["groups"], args["share"])
            grams = input_grams(model, names, calibration_batches(ctx.train, args["calibration"], seed=ctx.seed))
        shared = share_layers(model, args["groups"], args["share"], args["init"], args["delta_rank"], grams)
        details = {"groups": args["groups"], "share": args["share"], "init": args["init"],
                   "shared_layers": shared.config.shared_layers}
        if args["delta_rank"]:
            details.update(delta_rank=args["delta_rank"], fit=args["fit"])
    details.update(params_before=count_parameters(model), params_after=count_parameters(shared))
    details["history"] = recover(shared, ctx, args, desc="share_layers recovery")
    return shared, details


def _check(given: dict, kind: str):
    if kind == "transformer" and given.get("share") == "directions":
        return "share: directions applies to bidirectional LSTM/GRU models", "use all, attention or ffn"
    if kind == "recurrent" and (given.get("share", "directions") != "directions" or "groups" in given or given.get("delta_rank")):
        return "an LSTM/GRU shares weights between its two directions", "write `share_layers: {share: directions}`"
    return None


TECHNIQUES = (
    Technique(
        "share_layers", "parameter_sharing",
        # delta_rank > 0: relaxed sharing, a per-layer rank-r correction to each shared weight, fitted
        # to the weights or to each layer's inputs on `calibration` training sentences (fit).
        # share: directions ties a BiLSTM/GRU's backward direction to its forward one.
        defaults={"groups": 1, "share": "all", "init": "average", "delta_rank": 0, "fit": "weights", "calibration": 512,
                  **RECOVERY},
        choices={"share": ("all", "attention", "ffn", "directions"), "init": ("average", "first"),
                 "fit": ("weights", "activations")},
        bounds={"groups": (1, None), "delta_rank": (0, None), "calibration": (1, None)},
        models=("transformer", "recurrent"), check=_check, apply=apply_share_layers,
    ),
)
