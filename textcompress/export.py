"""Export to ONNX with dynamic batch and sequence axes, and check it against PyTorch.

Parity for an fp32 export: max abs logit difference on a fixed validation batch must stay
within `parity_tolerance`. A quantized export is judged instead by label agreement with its
fp32 parent over the whole validation set (`agreement_gate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from textcompress.data import Split, pad_arrays, pad_batch
from textcompress.inference import make_session, run_logits, split_logits

PARITY_ROWS = 32


class _Exportable(torch.nn.Module):
    """Names the graph's inputs and output: input_ids, attention_mask -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


def export_onnx(model: torch.nn.Module, out_path: str | Path, opset: int = 17) -> None:
    model.eval()
    vocab = model.config.vocab_size  # any in-vocabulary ids trace the same graph
    ids, mask = pad_batch([np.arange(5) % vocab, np.arange(3) % vocab])
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
               "logits": {0: "batch"}}
    with torch.no_grad():
        # The TorchScript exporter traces shapes symbolically and needs no extra packages.
        # eval() on the wrapper: the exporter restores the wrapper's mode afterwards, recursively.
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


PARENT_FILE = "parent.onnx"  # a quantized candidate's fp32 parent, kept for the latency guardrail


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
