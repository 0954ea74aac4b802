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
