"""Export to ONNX with dynamic batch and sequence axes, and check it against PyTorch.

Parity for an fp32 export: max abs logit difference on a fixed validation batch must stay
within `parity_tolerance`. A quantized export is judged instead by label agreement with its
fp32 parent over the whole validation set (`agreement_gate`).
"""

from __future__ import annotations

import contextlib
import math
import types
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from textcompress.data import Split, pad_arrays, pad_batch
from textcompress.deploy.inference import make_session, run_logits, split_logits
from textcompress.models.encoder import SelfAttention
from textcompress.catalog import PARENT_FILE  # noqa: F401 - re-exported: a quantized candidate's fp32 parent

PARITY_ROWS = 32


class _Exportable(torch.nn.Module):
    """Names the graph's inputs and output: input_ids, attention_mask -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


class _KeepLeadingReshape(torch.autograd.Function):
    """Reshape of the last dimension that keeps the first two (batch, sequence). The ONNX graph
    gets one Reshape with a constant target (0 copies the batch, -1 infers the sequence), where
    tracing a view would compute the target at run time from Shape, Gather and Concat nodes."""

    @staticmethod
    def forward(ctx, x, trailing: tuple[int, ...]):
        return x.reshape(*x.shape[:2], *trailing)

    @staticmethod
    def symbolic(g, x, trailing):
        return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([0, -1, *trailing], dtype=torch.int64)))


def _fused_self_attention(self: SelfAttention, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
    """SelfAttention.forward (softmax) as exported: Q, K and V from one product with their weights
    stacked, and head reshapes with constant targets."""
    projections = (self.query, self.key, self.value)
    stacked = torch.cat([p.weight for p in projections])
    qkv = x @ stacked.T + torch.cat([p.bias for p in projections])
    q, k, v = _KeepLeadingReshape.apply(qkv, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
    probs = (q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask_bias).softmax(-1)
    return _KeepLeadingReshape.apply((probs @ v).transpose(1, 2), (self.num_heads * self.head_dim,))


@contextlib.contextmanager
def fused_attention(model: torch.nn.Module):
    """Exports each softmax self-attention with its Q, K and V weights stacked into one product
    (one int8 kernel where there were three once quantized) and no run-time shape arithmetic:
    per-node overhead is much of a small model's time. Skipped where a projection is not a plain
    linear (low-rank, relaxed-shared, fake-quantized) or a weight is shared, since stacking would
    store a shared weight once per layer."""
    module_uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    weight_uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    patched = []
    for module in model.modules():
        if not isinstance(module, SelfAttention) or module.kind != "softmax" or module.head_gate is not None:
            continue
        projections = (module.query, module.key, module.value)
        if (module_uses[id(module)] == 1 and all(type(p) is torch.nn.Linear for p in projections)
                and all(weight_uses[id(p.weight)] == 1 for p in projections)):
            module.forward = types.MethodType(_fused_self_attention, module)
            patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def export_onnx(model: torch.nn.Module, out_path: str | Path, opset: int = 17, fuse_attention: bool = True) -> None:
    """`fuse_attention`: stacked Q/K/V products and constant head reshapes (see `fused_attention`);
    the graph computes the same logits either way."""
    model.eval()
    vocab = model.config.vocab_size  # any in-vocabulary ids trace the same graph
    ids, mask = pad_batch([np.arange(5) % vocab, np.arange(3) % vocab])
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
               "logits": {0: "batch"}}
    with torch.no_grad():
        # The TorchScript exporter traces shapes symbolically and needs no extra packages.
        # eval() on the wrapper: the exporter restores the wrapper's mode afterwards, recursively.
        with fused_attention(model) if fuse_attention else contextlib.nullcontext():
            torch.onnx.export(_Exportable(model).eval(), (ids, mask), str(out_path), input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], dynamic_axes=dynamic, opset_version=opset, dynamo=False)


def parity_batch(split: Split, rows: int = PARITY_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch of real validation rows of mixed lengths (so padding is exercised)."""
    return pad_arrays(split.input_ids[:rows])


def parity_max_abs_diff(model: torch.nn.Module, onnx_path: str | Path, split: Split) -> float:
    ids, mask = parity_batch(split)
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = run_logits(make_session(onnx_path), ids, mask)
    return float(np.abs(expected - got).max())


def label_agreement(onnx_a: str | Path, onnx_b: str | Path, split: Split) -> float:
    a = split_logits(make_session(onnx_a), split).argmax(-1)
    b = split_logits(make_session(onnx_b), split).argmax(-1)
    return float((a == b).mean())




def onnx_size_bytes(model_dir: str | Path) -> int:
    """The ONNX graph and its external data files; the tokenizer and the fp32 parent are not counted."""
    model_dir = Path(model_dir)
    return sum(p.stat().st_size for p in model_dir.iterdir()
               if (p.suffix in (".onnx", ".data") or p.name.endswith(".onnx.data")) and p.name != PARENT_FILE)


def compressed_size_bytes(onnx_path: str | Path) -> int:
    """The file deflated (zlib, level 6): what zeros from unstructured pruning save in storage and transfer."""
    import zlib

    compressor, total = zlib.compressobj(6), 0
    with open(onnx_path, "rb") as f:
        while chunk := f.read(1 << 22):
            total += len(compressor.compress(chunk))
    return total + len(compressor.flush())
