"""Tests for textcompress.deploy.attention_benchmark: it measures every kind at every length, finds the
crossover, and the report shows it (timings themselves are never asserted)."""

from __future__ import annotations

from dataclasses import replace

import torch

from textcompress.deploy.attention_benchmark import crossover, encoder_of_shape, plot_attention_benchmark, run_attention_benchmark
from textcompress.models.encoder import pool
from textcompress.decisions.report import attention_section

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
        assert len(result["attention_only"]["kinds"][kind]["latency_ms"]) == 2
    assert set(result["summary"]) == set(result["attention_only"]["summary"]) == {"linear", "linformer"}
    plot_attention_benchmark(result, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0
    text = "\n".join(attention_section(result))
    assert "| 64 |" in text and "**linear**" in text
    assert "Whole encoder" in text and "Attention sublayers only" in text and text.count("| 64 |") == 2


def test_attention_scope_runs_each_layers_attention_sublayer_and_nothing_else():
    like = replace(tiny_model_config(), vocab_size=200)
    full = encoder_of_shape(like, "linear", 32, 8, 8)
    only = encoder_of_shape(like, "linear", 32, 8, 8, scope="attention")
    ids = torch.randint(0, 200, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        x = full.embeddings(ids)
        bias = (1.0 - mask.float())[:, None, None, :] * -1e9
        for layer in full.encoder.layer:  # same seed, same weights: attention sublayers chained, FFN left out
            x = layer.attention(x, bias)
        expected = full.classifier(pool(x, mask.float(), full.config.pooling))
        torch.testing.assert_close(only(ids, mask), expected)
        assert not torch.allclose(full(ids, mask), expected)
