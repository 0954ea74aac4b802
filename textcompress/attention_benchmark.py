"""Where linear attention pays: latency and peak memory against sequence length.

SST-2 sentences are ~25 word-pieces, where softmax attention's n² term is small; this benchmark
measures encoders of the teacher's shape (layers, width, heads, FFN) with positions extended to
the longest length, randomly initialised (timing does not depend on the weights), one per
attention kind, exported to ONNX and run in ONNX Runtime on CPU at batch 1. Latency is the
median of interleaved runs; peak memory is VmHWM of a fresh process per (kind, length). The
crossover is the shortest measured length from which a variant stays faster than softmax.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from textcompress.benchmark import environment, peak_rss_mb
from textcompress.export import export_onnx
from textcompress.inference import make_session
from textcompress.modeling import EncoderConfig, TextClassifier


def encoder_of_shape(like: EncoderConfig, kind: str, max_length: int, features: int, linformer_length: int) -> TextClassifier:
    torch.manual_seed(0)
    config = replace(like, attention=kind, max_position_embeddings=max_length, performer_features=features,
                     linformer_length=linformer_length, shared_layers=[], low_rank={}, embedding_size=None)
    return TextClassifier(config).eval()


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
    lengths = sorted(lengths)
    results = {k: {"latency_ms": [], "peak_rss_mb": []} for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for kind in kinds:
            paths[kind] = Path(tmp) / f"{kind}.onnx"
            export_onnx(encoder_of_shape(like, kind, max(lengths), features, linformer_length), paths[kind])
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
            print(f"length {n}: " + ", ".join(f"{k} {results[k]['latency_ms'][-1]:.1f} ms / {results[k]['peak_rss_mb'][-1]:.0f} MB"
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
    shape = {"layers": like.num_layers, "hidden": like.hidden_size, "heads": like.num_heads, "ffn": like.intermediate_size,
             "performer_features": features, "linformer_length": linformer_length}
    return {"environment": environment(threads), "shape": shape, "batch_size": 1, "repeats": repeats,
            "lengths": lengths, "kinds": results, "summary": summary}


def plot_attention_benchmark(result: dict, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from textcompress.fileio import atomic_path

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for kind, series in result["kinds"].items():
        left.plot(result["lengths"], series["latency_ms"], marker="o", label=kind)
        right.plot(result["lengths"], series["peak_rss_mb"], marker="o", label=kind)
    for ax, label in ((left, "latency, batch 1 (ms)"), (right, "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    shape = result["shape"]
    fig.suptitle(f"Attention variants, {shape['layers']} layers × {shape['hidden']} wide, ONNX Runtime CPU, "
                 f"{result['environment']['threads']} thread(s)")
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
