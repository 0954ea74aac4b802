"""Tests for textcompress.attention_benchmark: it measures every kind at every length, finds the
crossover, and the report shows it (timings themselves are never asserted)."""

from __future__ import annotations

from dataclasses import replace

from textcompress.attention_benchmark import crossover, plot_attention_benchmark, run_attention_benchmark
from textcompress.report import attention_section

from tests.conftest import tiny_model_config


def test_crossover_is_where_the_variant_stays_faster():
    lengths = [128, 256, 512, 1024]
    assert crossover(lengths, [5, 4, 3, 2], [2, 3, 4, 5]) == 512
    assert crossover(lengths, [1, 4, 3, 2], [2, 3, 4, 5]) == 512  # an early win that does not last is not it
    assert crossover(lengths, [5, 5, 5, 5], [1, 1, 1, 1]) is None
    assert crossover(lengths, [1, 1, 1, 1], [2, 2, 2, 2]) == 128


def test_benchmark_measures_every_kind_and_length_and_reports_it(tmp_path):
    like = replace(tiny_model_config(), vocab_size=2000)
    result = run_attention_benchmark(like, [16, 64], ["softmax", "linear", "linformer"], repeats=1, features=8,
                                     linformer_length=8)
    for kind in ("softmax", "linear", "linformer"):
        assert len(result["kinds"][kind]["latency_ms"]) == 2 and all(v > 0 for v in result["kinds"][kind]["latency_ms"])
        assert all(v > 0 for v in result["kinds"][kind]["peak_rss_mb"])
    assert set(result["summary"]) == {"linear", "linformer"}
    plot_attention_benchmark(result, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0
    text = "\n".join(attention_section(result))
    assert "| 64 |" in text and "**linear**" in text
