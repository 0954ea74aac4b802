"""Quantization-aware training (the `qat` recipe step): fine-tune the model as it will run in int8.

Every Linear of the encoder (and the embedding's projection, when factorised) becomes a
`modeling.FakeQuantLinear`: its input rounded to uint8 over a range calibrated on `calibration`
training sentences, its weight to int8 per output channel. The word-piece and position tables
are rounded to int8 too. The rounding is in the forward pass and gradients pass straight
through it, so distillation from the teacher teaches the weights to live with it (Jacob et al.,
2018). The classifier head stays fp32: it is two rows.

Its `export` writes the fake-quantized model as a QDQ graph whose weights are int8 initializers
(`quantization.int8_from_fake_quant`), which ONNX Runtime runs with its integer kernels; the same
weights without the rounding are exported beside it as the fp32 parent for the guardrails.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from textcompress.errors import RecipeError
from textcompress.deploy.export import export_onnx, parity_max_abs_diff
from textcompress.deploy.inference import make_session, split_logits
from textcompress.models.encoder import FakeQuantLinear, TextClassifier, set_fake_quant
from textcompress.deploy.quantization import calibration_batches, int8_from_fake_quant
from textcompress.techniques.base import RECOVERY, Technique
from textcompress.techniques.recovery import recover

QUANTIZED_TABLES = ("embeddings.word_embeddings", "embeddings.position_embeddings")


def quantizable_modules(model: TextClassifier) -> list[str]:
    """The Linear modules of the embedding and encoder (each shared module once) and the int8 tables."""
    seen, names = set(), []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith(("embeddings.", "encoder.")) and id(module) not in seen:
            seen.add(id(module))
            names.append(name)
    return names + list(QUANTIZED_TABLES)


def fake_quantized(model: TextClassifier) -> TextClassifier:
    """The same weights in a model whose quantizable modules run fake-quantized (ranges not yet calibrated)."""
    if model.config.fake_quant:
        raise RecipeError("qat", "the model is already quantization-aware", "keep one qat step in the recipe")
    if model.config.share_delta_rank:
        # Its shared weights are plain Parameters, not Linears: they would stay fp32 unnoticed.
        raise RecipeError("qat", "a model with relaxed sharing (share_layers delta_rank) has no fake-quantized form",
                          "quantize it with `quantize: {mode: static}` or `{mode: dynamic}` instead")
    quantized = TextClassifier(replace(model.config, fake_quant=quantizable_modules(model)))
    missing, unexpected = quantized.load_state_dict(model.state_dict(), strict=False)
    if [k for k in missing if not k.endswith("input_range")] or unexpected:
        raise ValueError(f"qat: weights did not carry over (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return quantized.eval()


@torch.no_grad()
def calibrate_input_ranges(model: TextClassifier, batches: list[dict]) -> dict[str, list[float]]:
    """Each FakeQuantLinear's input range: the mean over batches of the batch minimum and maximum
    (a moving average is less at the mercy of one outlier batch than the overall extremes),
    observed with the model in fp32."""
    observed: dict[str, list] = {}
    layers = {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantLinear)}

    def observer(name):
        def hook(module, inputs):
            x = inputs[0]
            observed.setdefault(name, []).append((float(x.min()), float(x.max())))
        return hook

    handles = [m.register_forward_pre_hook(observer(name)) for name, m in layers.items()]
    set_fake_quant(model, False)
    model.eval()
    try:
        for batch in batches:
            model(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]))
    finally:
        for handle in handles:
            handle.remove()
        set_fake_quant(model, True)
    ranges = {}
    for name, module in layers.items():
        low, high = np.mean(observed[name], axis=0)
        module.input_range.copy_(torch.tensor([low, high]))
        ranges[name] = [round(float(low), 4), round(float(high), 4)]
    return ranges


def apply_qat(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    """The `qat` step: the model fake-quantized to int8 with calibrated input ranges, then fine-tuned
    by distillation; `export_qat` writes it as int8. Returns (fake-quantized model, details)."""
    quantized = fake_quantized(model)
    batches = calibration_batches(ctx.train, args["calibration"], seed=ctx.seed)
    ranges = calibrate_input_ranges(quantized, batches)
    details = {"quantized_linears": len(ranges), "quantized_tables": list(QUANTIZED_TABLES),
               "weights": "int8 per output channel (7-bit scale)", "activations": "uint8 per tensor, calibrated",
               "calibration_sentences": min(args["calibration"], len(ctx.train)), "input_ranges": ranges}
    # The calibrated model's accuracy before training is history[0]["validation_accuracy_before"].
    details["history"] = recover(quantized, ctx, args, desc="quantization-aware training")
    return quantized.eval(), details


def export_qat(onnx_in: Path, onnx_out: Path, args: dict, ctx) -> dict:
    """The export of a `qat` model: its fake-quantized graph made into an int8 file (`onnx_in`, the
    fp32 parent exported with the roundings off, is not read), and how closely it follows PyTorch's
    fake-quantized model."""
    from textcompress.training import predict_logits

    model = ctx.model
    set_fake_quant(model, True)
    fake_quant = Path(onnx_out).with_name("fake-quant.onnx")
    try:
        export_onnx(model, fake_quant, ctx.opset)
        details = int8_from_fake_quant(fake_quant, onnx_out)
    finally:
        fake_quant.unlink(missing_ok=True)
    torch_labels = predict_logits(model, ctx.validation).argmax(-1)
    onnx_labels = split_logits(make_session(onnx_out), ctx.validation).argmax(-1)
    details.update(max_abs_diff_to_fake_quant=parity_max_abs_diff(model, onnx_out, ctx.validation),
                   label_agreement_with_fake_quant=float((torch_labels == onnx_labels).mean()))
    return details


TECHNIQUES = (
    Technique(
        "qat", "quantization",
        # Fine-tunes the model fake-quantized to int8 (activation ranges calibrated on `calibration`
        # training sentences) with distillation; its `export` then writes it as int8. Last in a recipe.
        defaults={"calibration": 256, **RECOVERY, "epochs": 0.5, "lr": 2.0e-5},
        bounds={"calibration": (1, None)},
        apply=apply_qat, export=export_qat, last=True,
    ),
)
