"""Tests for the `compress` stage: a candidate trained with its own seed, and early stopping of search trials."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from textcompress.config import DEFAULTS
from textcompress.data import load_split
from textcompress.fileio import read_json
from textcompress.models.encoder import load_bundle
from textcompress.stages import compress
from textcompress.training import predict_logits

QUICK = {"distill": {"student": "bert", "layers": 1, "epochs": 0.2, "batch_size": 16}}
PRUNE = {"prune_structured": {"epochs": 0}}


@pytest.fixture(scope="module")
def logits(tiny_prepared, tiny_teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("compress_inputs") / "teacher_logits.npy"
    np.save(path, predict_logits(load_bundle(tiny_teacher)[0], load_split(tiny_prepared, "train")))
    return path


def write_params(path, candidates: dict, cache_dir, seed: int = 42, **data):
    params = copy.deepcopy(DEFAULTS)
    params["candidates"] = {"teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}], **candidates}
    params["seed"] = seed
    params["data"].update(max_length=32, **data)
    params["runtime"].update(cache_dir=str(cache_dir), device="cpu", threads=1)
    path.write_text(yaml.safe_dump(params))
    return path


def run(candidate, params, out, prepared, teacher, logits) -> dict:
    compress.main([candidate, "--params", str(params), "--prepared", str(prepared), "--teacher", str(teacher),
                   "--logits", str(logits), "--out", str(out)])
    return read_json(out / "steps.json")


# ---------------------------------------------------------------------------
# A candidate with its own seed


def test_a_candidates_own_seed_decides_its_weights(tmp_path, tiny_prepared, tiny_teacher, logits):
    candidates = {"seed-7": {"seed": 7, "steps": [QUICK]}, "seed-8": {"seed": 8, "steps": [QUICK]},
                  "seed-7-again": {"seed": 7, "steps": [QUICK]}}
    params = write_params(tmp_path / "params.yaml", candidates, tmp_path / "store")
    for name in candidates:
        summary = run(name, params, tmp_path / name, tiny_prepared, tiny_teacher, logits)
        assert summary["recipe"] == candidates[name]  # steps.json keeps the form it was written in
    weights = {name: (tmp_path / name / "model.safetensors").read_bytes() for name in candidates}
    assert weights["seed-7"] == weights["seed-7-again"]
    assert weights["seed-7"] != weights["seed-8"]


def test_the_global_seed_no_longer_matters_to_a_candidate_with_its_own(tmp_path, tiny_prepared, tiny_teacher, logits):
    candidates = {"own": {"seed": 7, "steps": [QUICK]}}
    for global_seed in (1, 2):
        params = write_params(tmp_path / f"{global_seed}.yaml", candidates, tmp_path / "store", seed=global_seed)
        run("own", params, tmp_path / str(global_seed), tiny_prepared, tiny_teacher, logits)
    assert (tmp_path / "1" / "model.safetensors").read_bytes() == (tmp_path / "2" / "model.safetensors").read_bytes()


def test_two_seeds_never_share_a_prefix_and_one_seed_does(tmp_path, tiny_prepared, tiny_teacher, logits):
    candidates = {"a": {"seed": 7, "steps": [QUICK]}, "b": {"seed": 8, "steps": [QUICK, PRUNE]},
                  "c": {"seed": 7, "steps": [QUICK, PRUNE]}}
    params = write_params(tmp_path / "params.yaml", candidates, tmp_path / "store")
    (first,) = run("a", params, tmp_path / "a", tiny_prepared, tiny_teacher, logits)["steps"]
    assert "stored_as" in first["prefix_store"]  # c, of the same seed, begins with a's step
    b = run("b", params, tmp_path / "b", tiny_prepared, tiny_teacher, logits)["steps"]
    assert [s["prefix_store"]["source"] for s in b] == ["computed", "computed"]
    c = run("c", params, tmp_path / "c", tiny_prepared, tiny_teacher, logits)["steps"]
    assert c[0]["prefix_store"] == {**c[0]["prefix_store"], "source": "store", "key": first["prefix_store"]["stored_as"]}


# ---------------------------------------------------------------------------
# Early stopping of search trials ($TEXTCOMPRESS_STOP_BELOW)

QUANTIZE = {"quantize": {"mode": "dynamic"}}
# A small GRU student after a fraction of an epoch: well below the teacher, so a threshold can stop it.
WEAK = {"distill": {"student": "gru", "layers": 1, "hidden_size": 4, "embedding_size": 4, "epochs": 0.1, "batch_size": 16}}
RECOVER = {"distill": {"student": "same", "epochs": 0.2, "batch_size": 16}}


@pytest.fixture(scope="module")
def with_selection(tmp_path_factory, tiny_tokenizer_file, tiny_teacher):
    """Prepared data with a selection split, and the teacher's logits on its (smaller) training split."""
    from textcompress.data import prepare

    from tests.conftest import tiny_sentiment_rows, write_tiny_tsv

    root = tmp_path_factory.mktemp("selection_inputs")
    data = dict(DEFAULTS["data"], train=str(write_tiny_tsv(root / "train.tsv", tiny_sentiment_rows(240, 1))),
                validation=str(write_tiny_tsv(root / "validation.tsv", tiny_sentiment_rows(80, 2))),
                max_length=32, selection_fraction=0.25)
    prepare(data, tiny_tokenizer_file, root / "prepared")
    np.save(root / "logits.npy", predict_logits(load_bundle(tiny_teacher)[0], load_split(root / "prepared", "train")))
    return root / "prepared", root / "logits.npy"


def selection_accuracy(bundle, prepared) -> float:
    rows = load_split(prepared, "selection")
    return float((predict_logits(load_bundle(bundle)[0], rows).argmax(-1) == rows.labels).mean())


def run_stage_failing(candidate, params, out, prepared, teacher, logits, error_file) -> dict:
    with pytest.raises(SystemExit) as exited:
        compress.main([candidate, "--params", str(params), "--prepared", str(prepared), "--teacher", str(teacher),
                       "--logits", str(logits), "--out", str(out)])
    assert exited.value.code == 2  # a user's matter, not a bug
    return read_json(error_file)


def test_a_trial_below_the_threshold_after_its_first_step_stops_and_says_why(tmp_path, monkeypatch, tiny_teacher,
                                                                            with_selection):
    prepared, logits = with_selection
    candidates = {"trial": [WEAK, RECOVER, QUANTIZE], "first-only": [WEAK]}
    params = write_params(tmp_path / "params.yaml", candidates, tmp_path / "store", selection_fraction=0.25)
    # The model after the first step, as a normal run makes it (the same seed, the same step).
    run("first-only", params, tmp_path / "first-only", prepared, tiny_teacher, logits)
    after_first = selection_accuracy(tmp_path / "first-only", prepared)
    assert after_first < 1.0  # else no threshold could stop it
    threshold = (after_first + 1.0) / 2
    monkeypatch.setenv("TEXTCOMPRESS_STOP_BELOW", str(threshold))
    monkeypatch.setenv("TEXTCOMPRESS_ERROR_FILE", str(tmp_path / "error.json"))
    record = run_stage_failing("trial", params, tmp_path / "out", prepared, tiny_teacher, logits, tmp_path / "error.json")
    assert record["kind"] == "stopped_early" and record["stage"] == "compress"
    assert record["details"] == {"accuracy": pytest.approx(after_first), "threshold": threshold,
                                 "steps_not_run": ["distill", "quantize"]}
    assert f"{after_first:.4f}" in record["message"] and "steps not run: distill, quantize" in record["message"]
    assert not (tmp_path / "out").exists()  # nothing written


def test_steps_that_train_nothing_do_not_count_as_the_first_training_step(tmp_path, monkeypatch, tiny_teacher,
                                                                          with_selection):
    prepared, logits = with_selection
    # Cutting heads with no recovery (epochs: 0) only reshapes the teacher; the check waits for the distillation.
    # Each in its own params file, so that no prefix is shared (a stored prefix would skip the first check).
    alone = write_params(tmp_path / "alone.yaml", {"first-two": [PRUNE, WEAK]}, tmp_path / "store", selection_fraction=0.25)
    params = write_params(tmp_path / "params.yaml", {"trial": [PRUNE, WEAK, QUANTIZE]}, tmp_path / "store",
                          selection_fraction=0.25)
    run("first-two", alone, tmp_path / "first-two", prepared, tiny_teacher, logits)
    after_training = selection_accuracy(tmp_path / "first-two", prepared)
    threshold = (after_training + 1.0) / 2
    monkeypatch.setenv("TEXTCOMPRESS_STOP_BELOW", str(threshold))
    monkeypatch.setenv("TEXTCOMPRESS_ERROR_FILE", str(tmp_path / "error.json"))
    record = run_stage_failing("trial", params, tmp_path / "out", prepared, tiny_teacher, logits, tmp_path / "error.json")
    assert record["details"]["accuracy"] == pytest.approx(after_training)
    assert record["details"]["steps_not_run"] == ["quantize"]


def test_a_trial_at_or_above_the_threshold_trains_exactly_as_a_normal_run(tmp_path, monkeypatch, tiny_teacher,
                                                                         with_selection):
    prepared, logits = with_selection
    params = write_params(tmp_path / "params.yaml", {"trial": [QUICK, RECOVER]}, tmp_path / "store", selection_fraction=0.25)
    run("trial", params, tmp_path / "normal", prepared, tiny_teacher, logits)
    monkeypatch.setenv("TEXTCOMPRESS_STOP_BELOW", "0")
    run("trial", params, tmp_path / "watched", prepared, tiny_teacher, logits)
    assert (tmp_path / "normal" / "model.safetensors").read_bytes() == (tmp_path / "watched" / "model.safetensors").read_bytes()


def test_early_stopping_without_a_selection_split_says_how_to_get_one(tmp_path, monkeypatch, tiny_prepared, tiny_teacher,
                                                                      logits):
    params = write_params(tmp_path / "params.yaml", {"trial": [QUICK]}, tmp_path / "store")
    monkeypatch.setenv("TEXTCOMPRESS_STOP_BELOW", "0.5")
    monkeypatch.setenv("TEXTCOMPRESS_ERROR_FILE", str(tmp_path / "error.json"))
    record = run_stage_failing("trial", params, tmp_path / "out", tiny_prepared, tiny_teacher, logits, tmp_path / "error.json")
    assert record["kind"] == "TextcompressError"
    assert "data.selection_fraction > 0" in record["message"] and "Fix:" in record["message"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["fast", "1.5", "-0.1"])
def test_a_bad_threshold_names_the_variable(tmp_path, monkeypatch, tiny_teacher, with_selection, value):
    prepared, logits = with_selection
    params = write_params(tmp_path / "params.yaml", {"trial": [QUICK]}, tmp_path / "store", selection_fraction=0.25)
    monkeypatch.setenv("TEXTCOMPRESS_STOP_BELOW", value)
    monkeypatch.setenv("TEXTCOMPRESS_ERROR_FILE", str(tmp_path / "error.json"))
    record = run_stage_failing("trial", params, tmp_path / "out", prepared, tiny_teacher, logits, tmp_path / "error.json")
    assert "TEXTCOMPRESS_STOP_BELOW" in record["message"] and "Fix:" in record["message"]
