"""Accuracy and side-by-side latency of exported candidates on the device machine's CPU.

The teacher's ONNX file is too large for one transfer, so it arrives in two parts
(.devrun/a, .devrun/b) and is checked against its sha256 before anything runs.
Everything else is the pipeline's own code: textcompress.inference and textcompress.benchmark.
"""
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())
import numpy as np  # noqa: E402

from textcompress.benchmark import benchmark_candidates, environment  # noqa: E402
from textcompress.data import load_split  # noqa: E402
from textcompress.inference import make_session, split_for_model, split_logits  # noqa: E402

ROOT = Path(".devrun")
MODELS = ROOT / "models"
OUT = Path(os.environ.get("OUT", "/tmp/out"))
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1

teacher = MODELS / "teacher"
teacher.mkdir(parents=True, exist_ok=True)
with open(teacher / "model.onnx", "wb") as out:
    for part in (ROOT / "a" / "teacher.part0", ROOT / "b" / "teacher.part1"):
        out.write(part.read_bytes())
digest = hashlib.sha256((teacher / "model.onnx").read_bytes()).hexdigest()
expected = (ROOT / "c" / "teacher.sha256").read_text().strip()
if digest != expected:
    sys.exit(f"teacher.onnx reassembled wrong: sha256 {digest} != {expected}")
for f in (ROOT / "c" / "teacher").iterdir():
    shutil.copy(f, teacher / f.name)
dirs = {"teacher": teacher}
for box in ("a", "b", "c"):
    for d in sorted((ROOT / box).iterdir()):
        if d.is_dir() and (d / "model.onnx").is_file():
            dirs[d.name] = d

prepared = ROOT / "c" / "prepared"
validation = load_split(prepared, "validation")
accuracy = {}
for name, d in dirs.items():
    split = split_for_model(validation, prepared, d, 128)
    logits = split_logits(make_session(d / "model.onnx", 2), split)
    accuracy[name] = float(np.mean(logits.argmax(axis=1) == np.asarray(split.labels)))
    print(f"{name:>24}: accuracy {100 * accuracy[name]:.2f} %", flush=True)

start = time.time()
limit = int(os.environ.get("LIMIT", 0)) or None
result = benchmark_candidates(dirs, validation.texts[:limit], threads=threads, warmup=10, batch_size=32, max_length=128)
result["accuracy"] = accuracy
result["sizes_bytes"] = {n: (d / "model.onnx").stat().st_size for n, d in dirs.items()}
result["teacher_sha256"] = digest
result["seconds"] = time.time() - start
print(json.dumps(environment(threads)))
base = result["candidates"]["teacher"]["latency_p50_ms"]
for name, row in result["candidates"].items():
    print(f"{name:>24}: p50 {row['latency_p50_ms']:.2f} ms ({base / row['latency_p50_ms']:.2f}x), "
          f"p95 {row['latency_p95_ms']:.2f} ms, {row['throughput_per_s']:.0f}/s at batch 32, "
          f"{result['sizes_bytes']['teacher'] / result['sizes_bytes'][name]:.2f}x smaller")
OUT.mkdir(parents=True, exist_ok=True)
(OUT / f"vnni_bench_t{threads}_run{os.environ.get('RUN', '1')}.json").write_text(json.dumps(result, indent=1))
