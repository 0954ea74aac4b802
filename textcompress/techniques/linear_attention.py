"""Linear-transformer methods: swap softmax attention for an O(n) variant, keep the weights.

The teacher's Q/K/V/O weights carry over unchanged (the variants differ only in how queries
meet keys, see `modeling.SelfAttention`), then distillation from the teacher recovers the
accuracy the swap costs:
- `linear`: kernelised attention with phi = elu + 1 (Katharopoulos et al., 2020);
- `performer`: FAVOR+ positive orthogonal random features (Choromanski et al., 2021), drawn
  again every `redraw` steps during training and frozen at the last draw for export;
- `linformer`: keys and values projected along the sequence to `length` positions with learned
  matrices (Wang et al., 2020), so inputs may be at most `max_position_embeddings` long.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from textcompress.modeling import TextClassifier, count_parameters
from textcompress.techniques.distillation import recover


def swap_attention(model: TextClassifier, kind: str, features: int = 64, length: int = 64, seed: int = 0) -> TextClassifier:
    if model.config.attention != "softmax":
        raise ValueError(f"attention: the model already uses {model.config.attention} attention")
    torch.manual_seed(seed)  # the random features and Linformer projections
    config = replace(model.config, attention=kind, performer_features=features, linformer_length=length)
    swapped = TextClassifier(config)
    missing, unexpected = swapped.load_state_dict(model.state_dict(), strict=False)
    new = [k for k in missing if not k.endswith(("features", "key_projection", "value_projection"))]
    if new or unexpected:
        raise ValueError(f"attention: weights did not carry over (missing {new[:3]}, unexpected {unexpected[:3]})")
    return swapped.eval()


def apply_attention(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    swapped = swap_attention(model, args["kind"], args["features"], args["length"], ctx.seed)
    hook = None
    if args["kind"] == "performer" and args["redraw"]:
        generator = torch.Generator().manual_seed(ctx.seed)

        def hook(step: int, total: int):
            if step % args["redraw"] == 0 and step < total:
                for layer in swapped.encoder.layer:
                    layer.attention.self.redraw_features(generator)

    details = {"kind": args["kind"], "params_before": count_parameters(model), "params_after": count_parameters(swapped)}
    if args["kind"] == "performer":
        details["features"] = args["features"]
    if args["kind"] == "linformer":
        details.update(length=args["length"], max_sequence=swapped.config.max_position_embeddings)
    details["history"] = recover(swapped, ctx, args, desc=f"{args['kind']} attention recovery", step_hook=hook)
    return swapped, details
