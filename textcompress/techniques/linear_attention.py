"""Linear-transformer methods: swap softmax attention for an O(n) variant, keep the weights.

The teacher's Q/K/V/O weights carry over unchanged (the variants differ only in how queries
meet keys, see `modeling.SelfAttention`), then distillation from the teacher recovers the
accuracy the swap costs:
- `linear`: kernelised attention with phi = elu + 1 (Katharopoulos et al., 2020);
- `hedgehog`: kernelised attention with a learned feature map (Zhang et al., 2024), first
  trained alone for `transfer_steps` to reproduce each layer's softmax attention weights
  (attention transfer: KL between the two, everything else frozen), then recovered like the rest;
- `performer`: FAVOR+ positive orthogonal random features (Choromanski et al., 2021), drawn
  again every `redraw` steps during training and frozen at the last draw for export;
- `linformer`: keys and values projected along the sequence to `length` positions with learned
  matrices (Wang et al., 2020), so inputs may be at most `max_position_embeddings` long.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from textcompress.data import Split, length_bucketed_batches, pad_batch
from textcompress.errors import RecipeError
from textcompress.models.encoder import ATTENTIONS, TextClassifier, count_parameters
from textcompress.techniques.base import RECOVERY, Technique
from textcompress.techniques.recovery import recover

LEARNED_BY_THE_SWAP = ("features", "key_projection", "value_projection", "feature_map_q", "feature_map_k")


def swap_attention(model: TextClassifier, kind: str, features: int = 64, length: int = 64, seed: int = 0) -> TextClassifier:
    if model.config.attention != "softmax":
        raise RecipeError("attention", f"the model already uses {model.config.attention} attention",
                          "keep one attention step in the recipe")
    torch.manual_seed(seed)  # the random features and Linformer projections
    config = replace(model.config, attention=kind, performer_features=features, linformer_length=length)
    swapped = TextClassifier(config)
    missing, unexpected = swapped.load_state_dict(model.state_dict(), strict=False)
    new = [k for k in missing if not k.endswith(LEARNED_BY_THE_SWAP)]
    if new or unexpected:
        raise ValueError(f"attention: weights did not carry over (missing {new[:3]}, unexpected {unexpected[:3]})")
    return swapped.eval()


def transfer_attention(model: TextClassifier, split: Split, steps: int, lr: float, batch_size: int = 32,
                       seed: int = 0) -> list[float]:
    """Hedgehog's attention transfer, in place: only the feature maps train, to minimise each
    layer's KL from softmax attention weights (computed from the same queries and keys) to the
    linear ones. The forward pass meanwhile runs softmax attention, so each layer learns on the
    softmax model's hidden states rather than on states its predecessors' maps could degrade
    (averaged over layers, the loss otherwise falls by making later layers' attention trivial).
    Returns the mean loss of every 50 steps."""
    attentions = [layer.attention.self for layer in model.encoder.layer]
    maps = [p for name, p in model.named_parameters() if name.endswith(("feature_map_q", "feature_map_k"))]
    if not maps:
        raise RecipeError("attention", "attention transfer needs hedgehog attention (its learned feature maps)",
                          "use kind: hedgehog")
    trainable = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in maps:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(maps, lr=lr)
    batches = length_bucketed_batches(np.array([len(x) for x in split.input_ids]), batch_size, shuffle=True, seed=seed)
    history, window = [], []
    model.eval()  # no dropout: the targets are the model's own softmax weights
    try:
        for step in range(steps):
            for attention in attentions:
                attention.transfer_losses = []
            ids, mask = pad_batch([split.input_ids[i] for i in batches[step % len(batches)]])
            model(ids, mask)
            loss = torch.stack([l for a in attentions for l in a.transfer_losses]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            window.append(loss.item())
            if len(window) == 50 or step == steps - 1:
                history.append(round(float(np.mean(window)), 5))
                window = []
    finally:
        for attention in attentions:
            attention.transfer_losses = None
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    return history


def apply_attention(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `attention` step: softmax attention swapped for a linear kind in every layer (hedgehog
    first trained by attention transfer), weights kept; then recovery. Returns (model, details)."""
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
    if args["kind"] == "hedgehog" and args["transfer_steps"]:
        details["transfer_loss"] = transfer_attention(swapped, ctx.train, args["transfer_steps"], args["transfer_lr"],
                                                      args["batch_size"], ctx.seed)
    details["history"] = recover(swapped, ctx, args, desc=f"{args['kind']} attention recovery", step_hook=hook)
    return swapped, details


TECHNIQUES = (
    Technique(
        "attention", "linear_attention",
        # transfer_steps / transfer_lr: hedgehog's attention transfer, its feature maps alone trained
        # to reproduce softmax attention's weights before the recovery fine-tune.
        defaults={"kind": "linear", "features": 64, "length": 64, "redraw": 100, "transfer_steps": 300,
                  "transfer_lr": 1.0e-2, **RECOVERY},
        choices={"kind": tuple(k for k in ATTENTIONS if k != "softmax")},
        bounds={"features": (1, None), "length": (1, None), "redraw": (0, None), "transfer_steps": (0, None),
                "transfer_lr": (0, 1)},
        apply=apply_attention,
    ),
)
