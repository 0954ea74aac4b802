"""Where linear attention pays: latency and peak memory against sequence length.

SST-2 sentences are ~25 word-pieces, where softmax attention's n² term is small; this benchmark
measures encoders of the teacher's shape (layers, width, heads, FFN) with positions extended to
the longest length, randomly initialised (timing does not depend on the weights), one per
attention kind, exported to ONNX and run in ONNX Runtime on CPU at batch 1. Latency is the
median of interleaved runs; peak memory is VmHWM of a fresh process per (kind, length). The
crossover is the shortest measured length from which a variant stays faster than softmax.

Two scopes are measured: the whole encoder, which is what a user deploys, and its attention
sublayers alone (the same layers with the FFN skipped), which is what the variants change.
At long lengths the FFN and the Q/K/V/O projections, linear in length and the same for every
kind, cap the whole-encoder ratio; the attention-only one shows the mechanism's own gain.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from textcompress.deploy.benchmark import environment, peak_rss_mb
from textcompress.deploy.export import export_onnx
from textcompress.deploy.inference import make_session
from textcompress.models.encoder import EncoderConfig, TextClassifier

SCOPES = ("encoder", "attention")


class SkipFeedForward(torch.nn.Module):
    """Stands in for a layer's FFN output block: passes the attention sublayer's output through."""

    def forward(self, ffn_hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual


def encoder_of_shape(like: EncoderConfig, kind: str, max_length: int, features: int, linformer_length: int,
                     scope: str = "encoder") -> TextClassifier:
    """An encoder of `like`'s shape with `kind` attention; scope `attention` skips every FFN."""
    torch.manual_seed(0)
    config = replace(like, attention=kind, max_position_embeddings=max_length, performer_features=features,
                     linformer_length=linformer_length, shared_layers=[], low_rank={}, embedding_size=None,
                     position_offset=0)  # positions 0..max_length-1 (a RoBERTa base counts from 2)
    model = TextClassifier(config).eval()
    if scope == "attention":
        for layer in model.encoder.layer:
            layer.intermediate, layer.output = torch.nn.Identity(), SkipFeedForward()
    return model


def crossover(lengths: list[int], variant_ms: list[float], softmax_ms: list[float]) -> int | None:
    """Shortest length from which the variant is faster at every longer measured length."""
    found = None
    for n, v, s in reversed(list(zip(lengths, variant_ms, softmax_ms))):
        if v < s:
            found = n
        else:
            break
    return found


def run_attention_benchmark(like: EncoderConfig, lengths: list[int], kinds: list[str], threads: int = 1,
                            repeats: int = 3, features: int = 64, linformer_length: int = 256) -> dict:
    """The whole encoder's figures at the top level (`kinds`, `summary`); the attention sublayers'
    alone under `attention_only`."""
    lengths = sorted(lengths)
    by_scope = {scope: measure(like, lengths, kinds, threads, repeats, features, linformer_length, scope)
                for scope in SCOPES}
    shape = {"layers": like.num_layers, "hidden": like.hidden_size, "heads": like.num_heads, "ffn": like.intermediate_size,
             "performer_features": features, "linformer_length": linformer_length}
    return {"environment": environment(threads), "shape": shape, "batch_size": 1, "repeats": repeats,
            "lengths": lengths, **by_scope["encoder"], "attention_only": by_scope["attention"]}


def measure(like: EncoderConfig, lengths: list[int], kinds: list[str], threads: int, repeats: int, features: int,
            linformer_length: int, scope: str) -> dict:
    """{"kinds": latency and peak memory per kind and length, "summary": each variant against softmax}."""
    results = {k: {"latency_ms": [], "peak_rss_mb": []} for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for kind in kinds:
            paths[kind] = Path(tmp) / f"{kind}.onnx"
            export_onnx(encoder_of_shape(like, kind, max(lengths), features, linformer_length, scope), paths[kind])
        sessions = {k: make_session(p, threads) for k, p in paths.items()}
        for n in lengths:
            rng = np.random.default_rng(n)
            # Word-pieces from the vocabulary's body (BERT keeps specials and unused slots below 1000).
            feed = {"input_ids": rng.integers(min(1000, like.vocab_size // 2), like.vocab_size, size=(1, n), dtype=np.int64),
                    "attention_mask": np.ones((1, n), dtype=np.int64)}
            for k in kinds:
                sessions[k].run(None, feed)  # warm-up
            samples = {k: [] for k in kinds}
            for r in range(repeats):
                for k in kinds[r % len(kinds):] + kinds[: r % len(kinds)]:
                    start = time.perf_counter()
                    sessions[k].run(None, feed)
                    samples[k].append((time.perf_counter() - start) * 1e3)
            for k in kinds:
                results[k]["latency_ms"].append(float(np.median(samples[k])))
                results[k]["peak_rss_mb"].append(peak_rss_mb(paths[k], threads, feed))
            print(f"{scope}, length {n}: " + ", ".join(f"{k} {results[k]['latency_ms'][-1]:.1f} ms / {results[k]['peak_rss_mb'][-1]:.0f} MB"
                                              for k in kinds), flush=True)
    softmax = results.get("softmax")
    summary = {}
    if softmax:
        for k in kinds:
            if k == "softmax":
                continue
            summary[k] = {"crossover_length": crossover(lengths, results[k]["latency_ms"], softmax["latency_ms"]),
                          "speedup_at_longest": softmax["latency_ms"][-1] / results[k]["latency_ms"][-1],
                          "memory_ratio_at_longest": softmax["peak_rss_mb"][-1] / results[k]["peak_rss_mb"][-1]}
    return {"kinds": results, "summary": summary}


def plot_skipped(reason: str, out_path: Path) -> None:
    """The stage's declared plot when the benchmark did not run: a small image that says why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textcompress.fileio import atomic_path

    fig = plt.figure(figsize=(6, 0.6), dpi=100)
    fig.text(0.5, 0.5, reason, ha="center", va="center", fontsize=8)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_attention_benchmark(result: dict, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textcompress.fileio import atomic_path

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    scopes = [("encoder", result["kinds"], "-")]
    if result.get("attention_only"):
        scopes.append(("attention only", result["attention_only"]["kinds"], ":"))
    for scope, kinds, style in scopes:
        for i, (kind, series) in enumerate(kinds.items()):
            label = kind if scope == "encoder" else f"{kind}, {scope}"
            left.plot(result["lengths"], series["latency_ms"], style, marker="o", color=f"C{i}", label=label)
            right.plot(result["lengths"], series["peak_rss_mb"], style, marker="o", color=f"C{i}", label=label)
    for ax, label in ((left, "latency, batch 1 (ms)"), (right, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    shape = result["shape"]
    fig.suptitle(f"Attention variants, {shape['layers']} layers × {shape['hidden']} wide, ONNX Runtime CPU, "
                 f"{result['environment']['threads']} thread(s)")
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
