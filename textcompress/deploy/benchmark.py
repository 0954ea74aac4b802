"""Latency, throughput and memory of exported candidates, measured side by side.

Every candidate is timed in one process, interleaved sentence by sentence (the order
rotates each time), with ONNX Runtime on CPU at a fixed thread count, after warm-up. Noise
from a shared machine then hits all candidates alike, so ratios between them are fair.
Only `session.run` is timed; tokenization is timed apart. Peak RSS is measured in a fresh
process per candidate (loading it and running batches), since one process cannot separate them.
The machine's load during the timing and the spread of each candidate's p50 over rounds are
recorded beside (textcompress.deploy.noise), so that a run on a busy machine can be told apart.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from textcompress.data import load_tokenizer, pad_arrays
from textcompress.deploy.inference import MODEL_FILE, UNFUSED, make_session
from textcompress.deploy.noise import MachineLoad, round_spread


def _cpuinfo(field: str) -> str | None:
    """The first value of `field` in /proc/cpuinfo (None where there is none, e.g. not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def vector_isa(flags: set[str] | None = None) -> str:
    """The widest vector instructions the CPU offers for int8 and float kernels. Int8 speed-ups
    depend on it: VNNI multiplies and sums int8 in one instruction, AVX2 needs three (and
    saturates 16-bit sums), so the same int8 model gains less on an AVX2-only host."""
    if flags is None:
        flags = set((_cpuinfo("flags") or "").split())
    for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return name
    return "unknown" if not flags else "SSE"


def environment(threads: int) -> dict:
    return {"cpu": cpu_model(), "vector_isa": vector_isa(), "onnxruntime": ort.__version__, "threads": threads,
            "python": platform.python_version(), "platform": platform.platform()}


def _percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ms = np.asarray(samples_ns) / 1e6
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def benchmark_candidates(model_dirs: dict[str, Path], texts: list, threads: int = 1, warmup: int = 10,
                         batch_size: int = 32, max_length: int = 128, measure_memory: bool = True,
                         model_files: dict[str, str] | None = None) -> dict:
    """`model_files` names another graph than model.onnx in an entry's directory (an fp32 parent)."""
    names = list(model_dirs)
    files = {n: Path(d) / (model_files or {}).get(n, MODEL_FILE) for n, d in model_dirs.items()}
    sessions = {n: make_session(files[n], threads) for n in names}
    tokenizers = {n: load_tokenizer(Path(d) / "tokenizer.json", max_length) for n, d in model_dirs.items()}

    tokenize_ns = {n: [] for n in names}
    encoded = {n: [] for n in names}
    for text in texts:
        for n in names:
            start = time.perf_counter_ns()
            ids = tokenizers[n].encode(*text if isinstance(text, tuple) else (text,)).ids  # a pair is two arguments
            tokenize_ns[n].append(time.perf_counter_ns() - start)
            encoded[n].append(np.asarray(ids, dtype=np.int64))

    def feed(n, rows):
        ids, mask = pad_arrays([encoded[n][i] for i in rows])
        return {"input_ids": ids, "attention_mask": mask}

    singles = {n: [feed(n, [i]) for i in range(len(texts))] for n in names}
    batches_idx = [list(range(i, min(i + batch_size, len(texts)))) for i in range(0, len(texts), batch_size)]
    batched = {n: [feed(n, rows) for rows in batches_idx] for n in names}

    for n in names:  # warm-up: first runs allocate and pick kernels
        for inputs in singles[n][:warmup] + batched[n][:2]:
            sessions[n].run(None, inputs)

    single_ns, batch_ns = {n: [] for n in names}, {n: [] for n in names}
    with MachineLoad() as load:  # what else ran on the machine while we timed (see noise.py)
        _time_interleaved(names, sessions, singles, batched, single_ns, batch_ns)

    results = {}
    for n in names:
        p50, p95 = _percentiles(single_ns[n])
        results[n] = {
            "latency_p50_ms": p50, "latency_p95_ms": p95,
            "latency_mean_ms": float(np.mean(single_ns[n]) / 1e6),
            "batch_latency_p50_ms": _percentiles(batch_ns[n])[0],
            "throughput_per_s": float(len(texts) / (sum(batch_ns[n]) / 1e9)),
            "tokenize_p50_ms": _percentiles(tokenize_ns[n])[0],
            "p50_round_spread": round_spread(single_ns[n]),
            "peak_rss_mb": peak_rss_mb(files[n], threads, max(batched[n], key=lambda b: b["input_ids"].size)) if measure_memory else None,
        }
    return {"environment": environment(threads), "sentences": len(texts), "batch_size": batch_size,
            "warmup": warmup, "machine_load": load.result, "candidates": results}


def _time_interleaved(names, sessions, singles, batched, single_ns, batch_ns) -> None:
    """Every sentence, then every batch, through every model, the order rotating each time."""
    for i in range(len(singles[names[0]])):
        for n in names[i % len(names):] + names[: i % len(names)]:
            start = time.perf_counter_ns()
            sessions[n].run(None, singles[n][i])
            single_ns[n].append(time.perf_counter_ns() - start)
    for j in range(len(batched[names[0]])):
        for n in names[j % len(names):] + names[: j % len(names)]:
            start = time.perf_counter_ns()
            sessions[n].run(None, batched[n][j])
            batch_ns[n].append(time.perf_counter_ns() - start)


# Runs in a bare interpreter: importing this package (torch, pandas) would dwarf a small model.
_PEAK_RSS_CHILD = """
import sys
import numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = int(sys.argv[2])
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"],
                               disabled_optimizers=sys.argv[4].split(",") if sys.argv[4] else None)
batch = dict(np.load(sys.argv[3]))
for _ in range(3):
    session.run(None, batch)
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec.
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
print(int(status[0]) / 1024)
"""


def peak_rss_mb(model_file: Path, threads: int, batch: dict[str, np.ndarray]) -> float:
    """Peak resident memory (MB) of a fresh process that loads the model and runs `batch` (real inputs),
    with the session optimised as `make_session` does it, so the graph measured is the graph timed."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "batch.npz", **batch)
        out = subprocess.run([sys.executable, "-c", _PEAK_RSS_CHILD, str(model_file), str(threads),
                              str(Path(tmp) / "batch.npz"), ",".join(UNFUSED)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"peak memory probe of {model_file} failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip().splitlines()[-1])
