"""Tests for the `evaluate` stage: each split's accuracy drop against the teacher and its paired bound."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from textcompress.config import DEFAULTS
from textcompress.data import prepare
from textcompress.models.encoder import TextClassifier, load_bundle
from textcompress.stages import evaluate

from tests.conftest import export_model_dir, tiny_model_config, tiny_sentiment_rows, write_tiny_tsv


@pytest.fixture(scope="module")
def prepared_with_selection(tmp_path_factory, tiny_tokenizer_file):
    root = tmp_path_factory.mktemp("selection_data")
    data = dict(DEFAULTS["data"], train=str(write_tiny_tsv(root / "train.tsv", tiny_sentiment_rows(240, 1))),
                validation=str(write_tiny_tsv(root / "validation.tsv", tiny_sentiment_rows(80, 2))),
                max_length=32, selection_fraction=0.25)
    prepare(data, tiny_tokenizer_file, root / "prepared")
    return root / "prepared"


@pytest.fixture(scope="module")
def onnx_dirs(tmp_path_factory, tiny_teacher):
    root = tmp_path_factory.mktemp("onnx")
    teacher, _ = load_bundle(tiny_teacher)
    torch.manual_seed(1)
    untrained = TextClassifier(tiny_model_config(layers=1))  # guesses: far below the teacher
    return {"teacher": export_model_dir(teacher, tiny_teacher, root / "teacher"),
            "untrained": export_model_dir(untrained.eval(), tiny_teacher, root / "untrained")}


def run_evaluate(tmp_path, prepared, onnx_dirs, candidate, level=0.95) -> dict:
    params = copy.deepcopy(DEFAULTS)
    params["data"]["max_length"] = 32
    params["evaluate"].update(bootstrap=500, bound_level=level)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / f"{candidate}-{level}.json"
    evaluate.main([candidate, "--params", str(tmp_path / "params.yaml"), "--prepared", str(prepared),
                   "--onnx", str(onnx_dirs[candidate]), "--teacher-onnx", str(onnx_dirs["teacher"]), "--out", str(out)])
    return json.loads(out.read_text())


def test_every_split_gives_the_drop_against_the_teacher_and_its_bound(tmp_path, prepared_with_selection, onnx_dirs):
    metrics = run_evaluate(tmp_path, prepared_with_selection, onnx_dirs, "untrained")
    teacher = run_evaluate(tmp_path, prepared_with_selection, onnx_dirs, "teacher")
    assert metrics["bound_level"] == 0.95
    for split in (lambda m: m, lambda m: m["selection"]):
        ours, theirs = split(metrics), split(teacher)
        assert ours["accuracy_drop"] == pytest.approx(theirs["accuracy"] - ours["accuracy"])
        assert ours["accuracy_drop"] > 0.1  # an untrained model against a trained teacher
        assert ours["accuracy_drop"] < ours["accuracy_drop_upper"] <= 1.0
        assert theirs["accuracy_drop"] == 0.0 and theirs["accuracy_drop_upper"] == 0.0  # the teacher's own row


def test_the_bound_follows_evaluate_bound_level(tmp_path, prepared_with_selection, onnx_dirs):
    loose = run_evaluate(tmp_path, prepared_with_selection, onnx_dirs, "untrained", level=0.6)
    strict = run_evaluate(tmp_path, prepared_with_selection, onnx_dirs, "untrained", level=0.99)
    assert loose["accuracy_drop"] == strict["accuracy_drop"]
    assert loose["accuracy_drop_upper"] < strict["accuracy_drop_upper"]
    assert strict["bound_level"] == 0.99
