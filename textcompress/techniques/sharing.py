"""Cross-layer parameter sharing (ALBERT, Lan et al., 2020) for a fine-tuned encoder.

Layers are split into contiguous groups; every layer of a group runs the same weights (all of
them, or only attention, or only the FFN). The shared weights start as the group's average
or as one chosen layer, then distillation from the teacher recovers what sharing cost. The
modules are tied, not copied, so the bundle and the exported ONNX store each shared weight once.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from textcompress.modeling import TextClassifier, count_parameters
from textcompress.techniques.distillation import recover


def group_sources(num_layers: int, groups: int) -> list[int]:
    """Contiguous groups, as even as possible: layer i -> the first layer of its group."""
    if not 1 <= groups <= num_layers:
        raise ValueError(f"share_layers: groups={groups} must be between 1 and the model's {num_layers} layers")
    bounds = [round(g * num_layers / groups) for g in range(groups + 1)]
    return [bounds[g] for g in range(groups) for _ in range(bounds[g], bounds[g + 1])]


def share_layers(model: TextClassifier, groups: int, share: str = "all", init: str = "average") -> TextClassifier:
    """A copy of `model` whose layers share weights by group. `init`: `average` of the group's
    layers, or `first` (the group's first layer as it is)."""
    config = model.config
    if config.shared_layers and any(s != i for i, s in enumerate(config.shared_layers)):
        raise ValueError("share_layers: the model already shares layers")
    if config.low_rank:
        raise ValueError("share_layers: put sharing before low-rank decomposition in the recipe")
    sources = group_sources(config.num_layers, groups)
    for i, s in enumerate(sources):
        if (config.layer_heads[i], config.layer_ffn[i]) != (config.layer_heads[s], config.layer_ffn[s]):
            raise ValueError(f"share_layers: layer {i} and layer {s} have different shapes (pruned unevenly); "
                             "share before pruning, or prune per layer to equal sizes")
    shared = TextClassifier(replace(config, shared_layers=sources, share=share))
    state = model.state_dict()
    if init == "average":
        for i, s in enumerate(sources):
            if s != i:
                continue
            members = [j for j, t in enumerate(sources) if t == s]
            for part_name in _part_prefixes(share):
                for key in [k for k in state if k.startswith(f"encoder.layer.{s}.{part_name}")]:
                    suffix = key[len(f"encoder.layer.{s}."):]
                    state[key] = torch.stack([state[f"encoder.layer.{j}.{suffix}"] for j in members]).mean(0)
    elif init != "first":
        raise ValueError(f"share_layers: init must be average or first, got {init!r}")
    # Tied modules read their weights through the group's first layer: keep only what it names,
    # plus the parts that stay per layer.
    own = {k: v for k, v in state.items() if k in shared.state_dict()}
    shared.load_state_dict(_tie_view(shared, own))
    return shared.eval()


def _part_prefixes(share: str) -> list[str]:
    return {"all": ["attention.", "intermediate.", "output."], "attention": ["attention."],
            "ffn": ["intermediate.", "output."]}[share]


def _tie_view(model: TextClassifier, state: dict) -> dict:
    """The state dict `model` expects, with every tied key taking its group leader's value."""
    from textcompress.modeling import shared_aliases

    full = dict(state)
    for alias, original in shared_aliases(model).items():
        full[alias] = state[original]
    return full


def apply_share_layers(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    from textcompress.modeling_rnn import RecurrentClassifier

    if isinstance(model, RecurrentClassifier):  # a BiLSTM/GRU: both directions run one set of weights
        from textcompress.techniques.recurrent import tie_directions
        shared = tie_directions(model, args["init"])
        details = {"share": "directions", "init": args["init"]}
    else:
        shared = share_layers(model, args["groups"], args["share"], args["init"])
        details = {"groups": args["groups"], "share": args["share"], "init": args["init"],
                   "shared_layers": shared.config.shared_layers}
    details.update(params_before=count_parameters(model), params_after=count_parameters(shared))
    details["history"] = recover(shared, ctx, args, desc="share_layers recovery")
    return shared, details
