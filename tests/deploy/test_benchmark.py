"""Tests for textcompress.deploy.benchmark: what benchmark_candidates measures and records.

Speed itself is measured by the benchmark stage, never asserted here: these tests check that
every measurement is present and sane, and that the timing is interleaved as the module says."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from textcompress.deploy.benchmark import benchmark_candidates, peak_rss_mb
from textcompress.data import pad_arrays
from textcompress.models.encoder import load_bundle
from textcompress.techniques.pruning import student_from_teacher

from tests.conftest import CLS_ID, SEP_ID, export_model_dir, tiny_sentiment_rows

TIMING_FIELDS = ("latency_p50_ms", "latency_p95_ms", "latency_mean_ms", "batch_latency_p50_ms", "throughput_per_s",
                 "tokenize_p50_ms")


@pytest.fixture(scope="module")
def two_models(tiny_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    teacher, _ = load_bundle(tiny_teacher)
    student = student_from_teacher(teacher, [0])
    return {"teacher": export_model_dir(teacher, tiny_teacher, root / "teacher"),
            "student": export_model_dir(student, tiny_teacher, root / "student")}


@pytest.fixture(scope="module")
def texts():
    return [text for text, _ in tiny_sentiment_rows(24, seed=9)]


def test_benchmark_candidates_measures_every_candidate(two_models, texts):
    result = benchmark_candidates(two_models, texts, threads=1, warmup=3, batch_size=8, max_length=32)
    assert set(result["candidates"]) == {"teacher", "student"}
    assert result["sentences"] == len(texts) and result["batch_size"] == 8 and result["warmup"] == 3
    for name, timing in result["candidates"].items():
        for field in TIMING_FIELDS:
            assert timing[field] > 0, (name, field)
        assert timing["latency_p50_ms"] <= timing["latency_p95_ms"], name
        assert timing["peak_rss_mb"] > 0, name


def test_candidates_are_timed_interleaved_in_an_order_that_rotates(two_models, texts, monkeypatch):
    """The point of the module: every model runs every sentence (and batch) in the same round, and
    which one goes first rotates, so a slow moment of a shared machine is spread over all."""
    from pathlib import Path

    import textcompress.deploy.benchmark as bench

    three = {**two_models, "again": two_models["teacher"]}
    calls: list[tuple[str, int]] = []
    real = bench.make_session

    class Recorded:
        def __init__(self, path, threads=None):
            self.session, self.name = real(path, threads), owner_of[str(path)].pop(0)

        def run(self, outputs, inputs):
            calls.append((self.name, inputs["input_ids"].shape[0]))
            return self.session.run(outputs, inputs)

    owner_of = {}  # model file -> the names it is benchmarked under, in the order sessions are made
    for name, folder in three.items():
        owner_of.setdefault(str(Path(folder) / "model.onnx"), []).append(name)
    monkeypatch.setattr(bench, "make_session", Recorded)
    warmup, batch_size = 2, 8
    bench.benchmark_candidates(three, texts, warmup=warmup, batch_size=batch_size, max_length=32, measure_memory=False)
    names, batches = list(three), -(-len(texts) // batch_size)
    timed = calls[len(names) * (warmup + min(2, batches)):]  # after each model's own warm-up
    singles, batched = timed[: len(texts) * len(names)], timed[len(texts) * len(names):]
    for i in range(len(texts)):
        round_ = singles[i * len(names):(i + 1) * len(names)]
        assert [n for n, _ in round_] == names[i % 3:] + names[: i % 3] and {size for _, size in round_} == {1}
    assert len(batched) == batches * len(names)
    for j in range(batches):
        assert [n for n, _ in batched[j * len(names):(j + 1) * len(names)]] == names[j % 3:] + names[: j % 3]


def test_benchmark_candidates_records_the_environment(two_models, texts):
    env = benchmark_candidates(two_models, texts[:6], threads=1, warmup=1, batch_size=4, measure_memory=False)["environment"]
    assert isinstance(env["cpu"], str) and env["cpu"]
    assert env["onnxruntime"] == ort.__version__
    assert env["threads"] == 1
    json.dumps(env)  # goes into candidates.json as is


def test_benchmark_candidates_can_skip_memory(two_models, texts):
    result = benchmark_candidates(two_models, texts[:4], threads=1, warmup=1, batch_size=4, measure_memory=False)
    assert all(timing["peak_rss_mb"] is None for timing in result["candidates"].values())


def test_peak_rss_mb_is_positive_on_a_real_batch(two_models):
    ids, mask = pad_arrays([np.array([CLS_ID, 5, 40, SEP_ID]), np.array([CLS_ID, 9, SEP_ID])])
    assert peak_rss_mb(two_models["student"] / "model.onnx", 1, {"input_ids": ids, "attention_mask": mask}) > 0


def test_peak_rss_mb_failure_names_the_model(two_models):
    ids = np.full((1, 4), 10_000, dtype=np.int64)  # outside the tiny vocabulary: the probe fails
    with pytest.raises(RuntimeError, match="student"):
        peak_rss_mb(two_models["student"] / "model.onnx", 1, {"input_ids": ids, "attention_mask": np.ones_like(ids)})


@pytest.mark.parametrize("flags,expected", [
    ({"avx2", "avx512f", "avx512_vnni"}, "AVX-512 VNNI"), ({"avx2", "avx_vnni"}, "AVX-VNNI"), ({"avx2", "avx512f"}, "AVX-512"),
    ({"fma", "avx", "avx2"}, "AVX2"), ({"sse4_2"}, "SSE"),
])
def test_the_vector_isa_names_the_widest_int8_instructions(flags, expected):
    from textcompress.deploy.benchmark import vector_isa

    assert vector_isa(flags) == expected


def test_a_benchmark_beside_busy_processes_records_them_and_is_judged_noisy(two_models, texts):
    """Real CPU burners, one per core, during a short real benchmark: the other processes' share of
    the cores is recorded and the run is flagged for it under the default limits."""
    import psutil

    from textcompress.config import DEFAULTS
    from textcompress.deploy.noise import verdict
    from tests.deploy.test_noise import cpu_burners

    with cpu_burners(psutil.cpu_count()):
        result = benchmark_candidates(two_models, texts * 20, threads=1, warmup=2, batch_size=8, max_length=32,
                                      measure_memory=False)
    load = result["machine_load"]
    assert load["wall_s"] > 0 and load["cores"] == psutil.cpu_count()
    assert load["other_cpu_share"] > DEFAULTS["benchmark"]["max_other_cpu_share"]
    judged = verdict(result, DEFAULTS["benchmark"])
    assert judged["noisy"] and any("cores during timing" in cause for cause in judged["causes"])
    for timing in result["candidates"].values():  # 480 sentences: 5 rounds of 96
        assert timing["p50_round_spread"] >= 0
