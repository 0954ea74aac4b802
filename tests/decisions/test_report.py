"""Tests for textcompress.decisions.report: rows of the candidates contract, failures, Pareto front, files."""

from __future__ import annotations

import json

import pytest

from textcompress.decisions.report import build_report, pareto_front, to_markdown, write_report
from textcompress.techniques import recipe_families

CONTRACT_FIELDS = {"name", "recipe", "families", "accuracy", "macro_f1", "accuracy_drop", "accuracy_ci", "size_mb", "params",
                   "latency_p50_ms", "latency_p95_ms", "throughput_per_s", "peak_rss_mb", "parity_max_abs_diff",
                   "label_agreement", "eligible", "status", "reasons", "details"}
POLICY = {"objective": "latency_p50_ms", "max_accuracy_drop": 1.0, "registered_model": "test-model"}

CANDIDATES = {
    "teacher": [],
    "int8-dynamic": [{"quantize": {"mode": "dynamic"}}],
    "distil-1": [{"distill": {"layers": 1}}],
    "distil-int8": [{"distill": {"layers": 2}}, {"quantize": {"mode": "dynamic"}}],
    "no-metrics": [{"distill": {"layers": 3}}],
    "crashed": [{"distill": {"layers": 4}}],
}
FAILURES = {"crashed": "compress@crashed failed: out of memory"}
ACCURACY = {"teacher": 0.90, "int8-dynamic": 0.895, "distil-1": 0.87, "distil-int8": 0.90}
# model.onnx bytes (+ external data) per candidate; size_mb is bytes / 1e6
ONNX_BYTES = {"teacher": (400_000, 0), "int8-dynamic": (100_000, 0), "distil-1": (150_000, 50_000),
              "distil-int8": (60_000, 0), "no-metrics": (120_000, 0)}
P50 = {"teacher": 10.0, "int8-dynamic": 4.0, "distil-1": 2.0, "distil-int8": 1.5, "no-metrics": 3.0}
PARITY_OK = {"parity_max_abs_diff": 3e-6, "parity_ok": True, "parity_tolerance": 1e-4, "steps": []}


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def artifacts(tmp_path):
    compressed, onnx, metrics = tmp_path / "compressed", tmp_path / "onnx", tmp_path / "metrics"
    for i, name in enumerate(CANDIDATES):
        if name == "crashed":
            continue  # nothing after compress ran
        write_json(compressed / name / "steps.json",
                   {"params": 1000 * (i + 1), "steps": [{"technique": "x"}] if CANDIDATES[name] else [],
                    "families": recipe_families(CANDIDATES[name]),  # compress writes them; report reads them
                    "torch_validation_accuracy": ACCURACY.get(name, 0.5)})
        graph, data = ONNX_BYTES[name]
        (onnx / name).mkdir(parents=True)
        (onnx / name / "model.onnx").write_bytes(b"\0" * graph)
        if data:
            (onnx / name / "model.onnx.data").write_bytes(b"\0" * data)
        (onnx / name / "tokenizer.json").write_bytes(b"{}" * 20_000)  # not counted in the size
        export = dict(PARITY_OK)
        if name in ("int8-dynamic", "distil-int8"):
            agreement = 0.99 if name == "int8-dynamic" else 0.95
            export.update(label_agreement_with_fp32=agreement, agreement_gate=0.98, agreement_ok=agreement >= 0.98)
        write_json(onnx / name / "export.json", export)
        if name in ACCURACY:
            acc = ACCURACY[name]
            write_json(metrics / f"{name}.json", {"accuracy": acc, "macro_f1": acc - 0.01, "accuracy_ci": [acc - 0.02, acc + 0.02],
                                                  "label_agreement": 1.0 if name == "teacher" else 0.97, "rows": 872})
    benchmark = {
        "environment": {"cpu": "Test CPU", "onnxruntime": "1.0", "threads": 1},
        "sentences": 100, "batch_size": 32, "warmup": 10,
        "candidates": {name: {"latency_p50_ms": p50, "latency_p95_ms": p50 * 1.5, "throughput_per_s": 1000 / p50,
                              "peak_rss_mb": 50.0 + p50, "tokenize_p50_ms": 0.05} for name, p50 in P50.items()},
    }
    return compressed, onnx, metrics, benchmark


@pytest.fixture
def report(artifacts):
    compressed, onnx, metrics, benchmark = artifacts
    return build_report(CANDIDATES, compressed, onnx, metrics, benchmark, POLICY, FAILURES)


def rows_by_name(report):
    return {r["name"]: r for r in report["rows"]}


def test_every_row_has_every_contract_field(report):
    assert [r["name"] for r in report["rows"]] == list(CANDIDATES)
    for r in report["rows"]:
        assert CONTRACT_FIELDS <= set(r), CONTRACT_FIELDS - set(r)


def test_rows_carry_metrics_sizes_timings_and_families(report):
    r = rows_by_name(report)["distil-1"]
    assert r["status"] == "ok" and r["recipe"] == CANDIDATES["distil-1"] and r["families"] == ["distillation"]
    assert r["accuracy"] == 0.87 and r["macro_f1"] == pytest.approx(0.86) and r["accuracy_ci"] == [pytest.approx(0.85), pytest.approx(0.89)]
    assert r["size_mb"] == pytest.approx((150_000 + 50_000) / 1e6)  # graph + external data, no tokenizer
    assert r["params"] == 3000
    assert r["latency_p50_ms"] == 2.0 and r["latency_p95_ms"] == 3.0 and r["peak_rss_mb"] == 52.0
    assert r["throughput_per_s"] == 500.0
    assert r["parity_max_abs_diff"] == 3e-6 and r["label_agreement"] == 0.97
    assert rows_by_name(report)["distil-int8"]["families"] == ["distillation", "quantization"]
    assert rows_by_name(report)["int8-dynamic"]["details"]["label_agreement_with_fp32"] == 0.99


def test_accuracy_drop_is_in_points_against_the_teacher(report):
    rows = rows_by_name(report)
    for name, acc in ACCURACY.items():
        assert rows[name]["accuracy_drop"] == pytest.approx(100 * (0.90 - acc))
    assert rows["int8-dynamic"]["accuracy_drop"] == pytest.approx(0.5)
    assert rows["distil-1"]["accuracy_drop"] == pytest.approx(3.0)


def test_a_candidate_without_metrics_is_failed_with_a_reason(report):
    r = rows_by_name(report)["no-metrics"]
    assert r["status"] == "failed" and not r["eligible"]
    assert len(r["reasons"]) == 1 and "evaluation" in r["reasons"][0]
    assert r["accuracy"] is None and r["accuracy_drop"] is None


def test_a_failure_shows_its_reason(report):
    r = rows_by_name(report)["crashed"]
    assert r["status"] == "failed" and not r["eligible"]
    assert r["reasons"] == [FAILURES["crashed"]]
    assert r["size_mb"] is None and r["latency_p50_ms"] is None


def test_eligibility_and_the_pick_follow_the_policy(report):
    rows = rows_by_name(report)
    assert {n for n, r in rows.items() if r["eligible"]} == {"int8-dynamic"}
    assert any("teacher" in reason for reason in rows["teacher"]["reasons"])
    assert any("accuracy drop" in reason for reason in rows["distil-1"]["reasons"])
    assert any("agreement" in reason for reason in rows["distil-int8"]["reasons"])
    # distil-int8 and distil-1 are faster but ineligible: the pick is the fastest eligible row
    assert report["pick"] == "int8-dynamic" and "champion" not in report  # the registry's word, not the report's
    assert report["environment"]["cpu"] == "Test CPU"
    assert report["benchmark"] == {"sentences": 100, "batch_size": 32, "warmup": 10, "machine_load": None, "noise": None}


def test_without_teacher_metrics_no_row_is_ok(artifacts):
    compressed, onnx, metrics, benchmark = artifacts
    (metrics / "teacher.json").unlink()
    report = build_report(CANDIDATES, compressed, onnx, metrics, benchmark, POLICY)
    assert all(r["status"] == "failed" for r in report["rows"])
    assert "teacher evaluation" in rows_by_name(report)["int8-dynamic"]["reasons"][0]
    assert report["pick"] is None


def test_pareto_front_on_hand_made_points():
    # (latency, accuracy): by latency 1:(5, .85) 4:(5, .80) 0:(10, .90) 3:(15, .88) 2:(20, .95)
    # 4 is dominated by 1 (same latency, less accurate); 3 by 0 (slower, less accurate).
    points = [(10, 0.90), (5, 0.85), (20, 0.95), (15, 0.88), (5, 0.80)]
    assert pareto_front(points) == [1, 0, 2]


def test_pareto_front_of_one_point_and_of_none():
    assert pareto_front([(3.0, 0.5)]) == [0]
    assert pareto_front([]) == []


def test_write_report_writes_its_files(report, tmp_path):
    out = tmp_path / "reports"
    write_report(report, out)

    assert json.loads((out / "candidates.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "candidates.md").read_text()
    for name in CANDIDATES:
        assert f"| {name} |" in markdown
    assert FAILURES["crashed"] in markdown
    assert "Pick of this run (the registry's challenger): **int8-dynamic**" in markdown
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher_accuracy"] == 0.90 and summary["pick"] == "int8-dynamic"
    assert summary["pick_latency_p50_ms"] == 4.0
    assert summary["vs_teacher_smaller"] == pytest.approx(0.4 / 0.1)
    assert summary["vs_teacher_faster_p50"] == pytest.approx(10.0 / 4.0)
    assert summary["vs_teacher_accuracy_drop_points"] == pytest.approx(0.5)
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries behind


def test_model_card_names_data_version_teacher_recipe_metrics_and_limits(report, tmp_path):
    from textcompress.decisions.report import model_card

    context = {"data_version": "abc123.dir", "base_model": "minilm-l6", "max_length": 128, "labels": [0, 1]}
    write_report(report, tmp_path, context)
    card = (tmp_path / "model_card.md").read_text()
    assert card == model_card(report, context)
    assert card.startswith("# Model card: int8-dynamic")
    for expected in ("abc123.dir", "minilm-l6", "`quantize`", "90.00%", "128 word-pieces", "Limits"):
        assert expected in card, expected
    assert "no model to describe" in model_card({**report, "pick": None}, context)


def test_steps_show_accuracy_before_and_after_their_fine_tune(artifacts, tmp_path):
    compressed, onnx, metrics, benchmark = artifacts
    history = [{"validation_accuracy_before": 0.9048, "epoch": 1, "loss": 0.2, "validation_accuracy": 0.8807}]
    write_json(compressed / "distil-1" / "steps.json",
               {"params": 1000, "torch_validation_accuracy": 0.87,
                "steps": [{"technique": "low_rank", "details": {"ratio": 0.33, "history": history}}]})
    write_report(build_report(CANDIDATES, compressed, onnx, metrics, benchmark, POLICY, FAILURES), tmp_path / "r")
    markdown = (tmp_path / "r" / "candidates.md").read_text()
    assert "validation accuracy before its fine-tune 90.48 %, after each epoch 88.07 %" in markdown


def test_candidates_md_names_the_bad_rows_prepare_skipped(report, tmp_path):
    write_report(report, tmp_path / "plain")
    assert "bad row" not in (tmp_path / "plain" / "candidates.md").read_text()
    report["skipped_rows"] = {"count": 23, "lines": ["data/train.tsv:3 (has an empty text)", "data/dev.tsv:9 (has no label)"],
                              "not_listed": 21}
    write_report(report, tmp_path / "skipped")
    assert ("Data: prepare skipped 23 bad rows (data.bad_rows: skip): data/train.tsv:3 (has an empty text); "
            "data/dev.tsv:9 (has no label) and 21 more.") in (tmp_path / "skipped" / "candidates.md").read_text()


NOISY = {"noisy": True, "causes": ["other processes used 1.3 of 2 cores during timing (limit: 25% of the cores, "
                                   "benchmark.max_other_cpu_share)"]}
TABLE_HEADER = "| candidate | families |"


def test_a_noisy_benchmark_is_flagged_above_the_table_and_in_candidates_json(artifacts):
    compressed, onnx, metrics, benchmark = artifacts
    load = {"cores": 2, "other_cpu_cores": 1.3, "other_cpu_share": 0.65}
    report = build_report(CANDIDATES, compressed, onnx, metrics, {**benchmark, "noise": NOISY, "machine_load": load},
                          POLICY, FAILURES)
    assert report["benchmark"]["noise"] == NOISY and report["benchmark"]["machine_load"] == load
    lines = to_markdown(report).splitlines()
    warning = next(i for i, line in enumerate(lines) if "Noisy benchmark" in line)
    assert warning < next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER))
    assert "1.3 of 2 cores" in lines[warning]
    assert "promotion on `latency_p50_ms` is refused unless `benchmark.allow_noisy: true`" in lines[warning]


def test_under_a_size_objective_the_noisy_warning_says_promotion_is_not_blocked(artifacts):
    compressed, onnx, metrics, benchmark = artifacts
    report = build_report(CANDIDATES, compressed, onnx, metrics, {**benchmark, "noise": NOISY},
                          {**POLICY, "objective": "size_mb"}, FAILURES)
    markdown = to_markdown(report)
    assert "Noisy benchmark" in markdown and "promotion on `size_mb` does not read the timing and is not blocked" in markdown
    assert "refused" not in markdown


def test_a_quiet_benchmark_adds_no_warning(artifacts):
    compressed, onnx, metrics, benchmark = artifacts
    quiet = {"noisy": False, "causes": []}
    report = build_report(CANDIDATES, compressed, onnx, metrics, {**benchmark, "noise": quiet}, POLICY, FAILURES)
    assert report["benchmark"]["noise"] == quiet and "Noisy benchmark" not in to_markdown(report)


def with_bounds(metrics_dir, bounds: dict, selection: dict | None = None):
    """Add each candidate's drop bound (a fraction, as evaluate writes it) to its metrics file."""
    for name, upper in bounds.items():
        path = metrics_dir / f"{name}.json"
        data = json.loads(path.read_text())
        data.update(accuracy_drop_upper=upper, bound_level=0.95)
        if selection is not None:
            data["selection"] = {"accuracy": data["accuracy"], "accuracy_drop_upper": selection[name]}
        path.write_text(json.dumps(data))


def test_rows_carry_the_drop_bound_in_points_and_candidates_md_shows_it(artifacts):
    compressed, onnx, metrics, benchmark = artifacts
    with_bounds(metrics, {"teacher": 0.0, "int8-dynamic": 0.0143, "distil-1": 0.045, "distil-int8": 0.01})
    report = build_report(CANDIDATES, compressed, onnx, metrics, benchmark, POLICY, FAILURES)
    rows = rows_by_name(report)
    assert rows["int8-dynamic"]["drop_upper"] == pytest.approx(1.43)
    assert rows["int8-dynamic"]["accuracy_drop_upper"] == pytest.approx(1.43)
    assert rows["teacher"]["drop_upper"] == 0.0 and rows["no-metrics"]["drop_upper"] is None
    # point budget (the default): int8-dynamic's drop of 0.5 passes though its bound does not
    assert report["pick"] == "int8-dynamic"
    lines = to_markdown(report).splitlines()
    header = next(line for line in lines if line.startswith("| candidate |")).split(" | ")
    assert header[header.index("drop (pts)") + 1] == "drop bound"
    int8 = next(line for line in lines if line.startswith("| int8-dynamic |")).split(" | ")
    assert int8[header.index("drop bound")] == "+1.43"


def test_under_budget_on_bound_the_bound_decides_and_the_reason_names_it(artifacts):
    compressed, onnx, metrics, benchmark = artifacts
    with_bounds(metrics, {"teacher": 0.0, "int8-dynamic": 0.0143, "distil-1": 0.045, "distil-int8": 0.01})
    report = build_report(CANDIDATES, compressed, onnx, metrics, benchmark, {**POLICY, "budget_on": "bound"}, FAILURES)
    rows = rows_by_name(report)
    assert not rows["int8-dynamic"]["eligible"] and report["pick"] is None
    reason = "accuracy drop bound 1.43 points (95 % paired bootstrap) exceeds the budget of 1.0"
    assert reason in rows["int8-dynamic"]["reasons"]
    assert f"**int8-dynamic**: {reason}" in to_markdown(report)


def test_the_drop_bound_follows_the_select_on_split(artifacts):
    compressed, onnx, metrics, benchmark = artifacts
    names = ("teacher", "int8-dynamic", "distil-1", "distil-int8")
    with_bounds(metrics, dict.fromkeys(names, 0.02), selection=dict(zip(names, (0.0, 0.005, 0.03, 0.004))))
    policy = {**POLICY, "select_on": "selection", "budget_on": "bound"}
    rows = rows_by_name(build_report(CANDIDATES, compressed, onnx, metrics, benchmark, policy, FAILURES))
    assert rows["int8-dynamic"]["drop_upper"] == pytest.approx(0.5)
    assert rows["int8-dynamic"]["selection_accuracy_drop_upper"] == pytest.approx(0.5)
    assert rows["int8-dynamic"]["accuracy_drop_upper"] == pytest.approx(2.0)
    assert rows["int8-dynamic"]["eligible"]


def test_a_candidate_with_its_own_seed_keeps_that_form_in_its_row_and_card(artifacts):
    from textcompress.decisions.report import model_card

    compressed, onnx, metrics, benchmark = artifacts
    seeded = {"seed": 3, "steps": CANDIDATES["int8-dynamic"]}
    report = build_report({**CANDIDATES, "int8-dynamic": seeded}, compressed, onnx, metrics, benchmark, POLICY, FAILURES)
    assert rows_by_name(report)["int8-dynamic"]["recipe"] == seeded and report["pick"] == "int8-dynamic"
    card = model_card(report, {"data_version": "v", "base_model": "minilm-l6", "max_length": 128, "labels": [0, 1]})
    assert "1. `quantize` {'mode': 'dynamic'}" in card and "its own seed, 3" in card
