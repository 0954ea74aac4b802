"""Tests for textcompress.techniques.prefix_store: candidates whose recipes begin with the same
steps compute them once, and what a candidate loads is bit for bit what it would have computed."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from textcompress.config import DEFAULTS
from textcompress.data import load_split
from textcompress.fileio import atomic_new_dir, read_json
from textcompress.models.encoder import load_bundle, save_bundle
from textcompress.stages import compress
from textcompress.techniques import parse_recipe
from textcompress.techniques.prefix_store import CODE, PREFIXES, prune, shared_lengths
from textcompress.training import predict_logits

ROOT = Path(__file__).resolve().parents[2]
FIRST = {"distill": {"student": "bert", "layers": 1, "epochs": 1, "batch_size": 16}}
# A GRU student's initial weights come from the global random state after the first step: equal
# weights with and without the store need that state restored with the prefix.
GRU = {"distill": {"student": "gru", "layers": 1, "hidden_size": 8, "embedding_size": 8, "epochs": 1, "batch_size": 16}}
TRAINED = "distill: epoch 1 validation accuracy"  # what a distillation's training says (stderr) once it has run


@pytest.fixture(scope="module")
def inputs(tiny_prepared, tiny_teacher, tmp_path_factory) -> dict:
    """The compress stage's inputs: prepared data, the teacher, its logits, and a second teacher."""
    root = tmp_path_factory.mktemp("prefix_inputs")
    teacher, labels = load_bundle(tiny_teacher)
    np.save(root / "teacher_logits.npy", predict_logits(teacher, load_split(tiny_prepared, "train")))
    with torch.no_grad():
        teacher.classifier.bias.add_(0.01)  # another teacher: one weight set differs
    save_bundle(teacher, root / "other_teacher", tiny_prepared / "tokenizer.json", labels)
    return {"prepared": tiny_prepared, "teacher": tiny_teacher, "logits": root / "teacher_logits.npy",
            "other_teacher": root / "other_teacher"}


def write_params(path: Path, candidates: dict, cache_dir: Path, seed: int = 42) -> Path:
    params = copy.deepcopy(DEFAULTS)
    params["candidates"] = {"teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}], **candidates}
    params["seed"] = seed
    params["data"]["max_length"] = 32
    params["runtime"].update(cache_dir=str(cache_dir), device="cpu", threads=1)
    path.write_text(yaml.safe_dump(params))
    return path


def stage_args(inputs: dict, candidate: str, params: Path, out: Path, teacher: Path | None = None) -> list[str]:
    return [candidate, "--params", str(params), "--prepared", str(inputs["prepared"]),
            "--teacher", str(teacher or inputs["teacher"]), "--logits", str(inputs["logits"]), "--out", str(out)]


def run_in_process(inputs, candidate, params, out, teacher=None) -> list[dict]:
    compress.main(stage_args(inputs, candidate, params, out, teacher))
    return read_json(out / "steps.json")["steps"]


def run_fresh(inputs, candidate, params, out) -> subprocess.CompletedProcess:
    """The stage in its own process, as `dvc repro` runs it (the global random state starts afresh)."""
    done = subprocess.run([sys.executable, "-m", "textcompress.stages.compress", *stage_args(inputs, candidate, params, out)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done


def sources(steps: list[dict]) -> list[str]:
    return [s["prefix_store"]["source"] for s in steps]


# ---------------------------------------------------------------------------
# (a) the second candidate loads the shared prefix, and ends with the same weights exactly


def test_a_shared_prefix_is_computed_once_and_loading_it_changes_no_bit(inputs, tmp_path):
    candidates = {"one": [FIRST], "two": [FIRST, GRU]}
    store, empty = tmp_path / "store", tmp_path / "empty"
    params = write_params(tmp_path / "params.yaml", candidates, store)

    first = run_fresh(inputs, "one", params, tmp_path / "one")
    (one,) = read_json(tmp_path / "one" / "steps.json")["steps"]
    key = one["prefix_store"]["stored_as"]
    assert one["prefix_store"]["source"] == "computed" and (store / PREFIXES / key / "entry.json").is_file()
    assert first.stderr.count(TRAINED) == 1
    written = (store / PREFIXES / key / "state.pt").stat().st_mtime_ns

    second = run_fresh(inputs, "two", params, tmp_path / "two")
    loaded, trained = read_json(tmp_path / "two" / "steps.json")["steps"]
    assert loaded["prefix_store"] == {"source": "store", "key": key, "written_by": "one",
                                      "created": read_json(store / PREFIXES / key / "entry.json")["created"]}
    assert loaded["details"] == one["details"] and trained["prefix_store"]["source"] == "computed"
    # Only the GRU's distillation trained in this process; the entry was read, not written again.
    assert second.stderr.count(TRAINED) == 1
    assert (store / PREFIXES / key / "state.pt").stat().st_mtime_ns == written

    alone = run_fresh(inputs, "two", write_params(tmp_path / "empty.yaml", candidates, empty), tmp_path / "two-alone")
    assert alone.stderr.count(TRAINED) == 2 and sources(read_json(tmp_path / "two-alone" / "steps.json")["steps"]) == [
        "computed", "computed"]
    assert (tmp_path / "two" / "model.safetensors").read_bytes() == (tmp_path / "two-alone" / "model.safetensors").read_bytes()
    with_store, without = (read_json(tmp_path / name / "steps.json") for name in ("two", "two-alone"))
    assert with_store["torch_validation_accuracy"] == without["torch_validation_accuracy"]
    assert [s["details"] for s in with_store["steps"]] == [s["details"] for s in without["steps"]]


def test_a_prefix_that_changes_the_context_restores_it(inputs, tmp_path):
    # trim_vocab replaces the teacher (its table trimmed too), the tokenizer and the tokenized splits;
    # the next step reads all of them (hidden-state distillation feeds the teacher the new ids).
    trim = {"trim_vocab": {"min_count": 2}}
    then = {"distill": {"student": "bert", "layers": 1, "epochs": 0.5, "batch_size": 16, "hidden_weight": 1.0}}
    candidates = {"one": [trim], "two": [trim, then]}
    shared = write_params(tmp_path / "params.yaml", candidates, tmp_path / "store")
    (one,) = run_in_process(inputs, "one", shared, tmp_path / "one")
    assert one["details"]["vocab_after"] < one["details"]["vocab_before"]
    assert sources(run_in_process(inputs, "two", shared, tmp_path / "two")) == ["store", "computed"]
    alone = write_params(tmp_path / "alone.yaml", candidates, tmp_path / "empty")
    assert sources(run_in_process(inputs, "two", alone, tmp_path / "two-alone")) == ["computed", "computed"]
    for name in ("model.safetensors", "tokenizer.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "two-alone" / name).read_bytes()


def test_a_candidate_that_shares_nothing_stores_nothing(inputs, tmp_path):
    params = write_params(tmp_path / "params.yaml", {"one": [FIRST]}, tmp_path / "store")
    (step,) = run_in_process(inputs, "one", params, tmp_path / "one")
    assert step["prefix_store"] == {"source": "computed"} and not (tmp_path / "store" / PREFIXES).exists()


def test_a_step_that_draws_before_seeding_itself_draws_from_the_seed(inputs, tmp_path):
    # A GRU student's initial weights are drawn before its training seeds the generators: the stage
    # seeds them first, so two processes (whose generators start at random) agree.
    params = write_params(tmp_path / "params.yaml", {"gru": [GRU]}, tmp_path / "store")
    for name in ("first", "second"):
        run_fresh(inputs, "gru", params, tmp_path / name)
    assert (tmp_path / "first" / "model.safetensors").read_bytes() == (tmp_path / "second" / "model.safetensors").read_bytes()


# ---------------------------------------------------------------------------
# (b) what the prefix depends on is in its key

QUICK = {"distill": {"student": "bert", "layers": 1, "epochs": 0.2, "batch_size": 16}}


def quick_run(inputs, tmp_path, name: str, first: dict = QUICK, seed: int = 42, teacher=None) -> dict:
    params = write_params(tmp_path / f"{name}.yaml", {"one": [first], "two": [first, {"prune_structured": {"epochs": 0}}]},
                         tmp_path / "store", seed)
    (step,) = run_in_process(inputs, "one", params, tmp_path / name, teacher)
    return step["prefix_store"]


@pytest.mark.parametrize("change", ["arguments", "seed", "teacher"])
def test_changing_the_prefixs_arguments_seed_or_teacher_misses_the_store(inputs, tmp_path, change):
    stored = quick_run(inputs, tmp_path, "first")
    assert quick_run(inputs, tmp_path, "again") == {"source": "store", "key": stored["stored_as"], "written_by": "one",
                                                   "created": read_json(tmp_path / "store" / PREFIXES / stored["stored_as"] / "entry.json")["created"]}
    changed = {"arguments": lambda: quick_run(inputs, tmp_path, "changed", {"distill": {**QUICK["distill"], "lr": 2.0e-4}}),
               "seed": lambda: quick_run(inputs, tmp_path, "changed", seed=7),
               "teacher": lambda: quick_run(inputs, tmp_path, "changed", teacher=inputs["other_teacher"])}[change]()
    assert changed["source"] == "computed" and changed["stored_as"] != stored["stored_as"]
    assert {p.name for p in (tmp_path / "store" / PREFIXES).iterdir() if p.is_dir()} == {stored["stored_as"], changed["stored_as"]}


def test_an_int_given_for_a_float_argument_is_the_same_prefix():
    def steps(epochs):
        return parse_recipe("x", [{"distill": {"epochs": epochs}}, {"prune_structured": {}}], ValueError).steps

    assert shared_lengths(steps(1)[:1], [steps(1.0)]) == {1}
    assert shared_lengths(steps(1), [steps(2)]) == set()
    assert shared_lengths(steps(1), [steps(1)[:1], steps(1)]) == {1, 2}


# ---------------------------------------------------------------------------
# (c) a corrupt or half-written entry is never loaded


def flip_a_byte(entry: Path):
    data = bytearray((entry / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / "state.pt").write_bytes(bytes(data))


CORRUPTIONS = {
    "a flipped byte in its state": flip_a_byte,
    "a truncated state": lambda entry: (entry / "state.pt").write_bytes((entry / "state.pt").read_bytes()[:1000]),
    "an unreadable entry.json": lambda entry: (entry / "entry.json").write_text("{not json"),
    "no entry.json (a writer died)": lambda entry: (entry / "entry.json").unlink(),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS))
def test_a_corrupt_or_half_written_entry_is_computed_again(inputs, tmp_path, corrupt, capsys):
    stored = quick_run(inputs, tmp_path, "first")
    entry = tmp_path / "store" / PREFIXES / stored["stored_as"]
    CORRUPTIONS[corrupt](entry)

    again = quick_run(inputs, tmp_path, "again")
    assert again == {"source": "computed", "stored_as": stored["stored_as"]}
    assert f"entry {stored['stored_as']} is unusable" in capsys.readouterr().err
    assert (tmp_path / "first" / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()
    assert quick_run(inputs, tmp_path, "third")["source"] == "store"  # the entry written again is whole


def test_a_writers_leftover_folder_is_not_an_entry(inputs, tmp_path):
    stored = quick_run(inputs, tmp_path, "first")
    entry = tmp_path / "store" / PREFIXES / stored["stored_as"]
    entry.rename(entry.with_name(f".{entry.name}.tmp-abc123"))  # as a killed writer leaves it
    assert quick_run(inputs, tmp_path, "again") == {"source": "computed", "stored_as": stored["stored_as"]}


# ---------------------------------------------------------------------------
# The store's key covers the compress stage's code; publishing; gc


def test_the_hashed_code_is_the_compress_stages_code_in_dvc_yaml():
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["compress"]["do"]["deps"]
    code = {d.removeprefix("textcompress/") for d in deps if d.startswith("textcompress/")}
    assert code == set(CODE)


@pytest.mark.parametrize("kind", ["gelu_new", "qat", "performer", "gru", "cnn"])
def test_the_models_steps_make_can_be_stored_whole(kind):
    # An entry pickles the model (every attribute, not only its weights), so each kind must pickle.
    from dataclasses import replace

    from textcompress.models.cnn import ConvClassifier, ConvConfig
    from textcompress.models.encoder import TextClassifier
    from textcompress.models.recurrent import RecurrentClassifier, RecurrentConfig
    from textcompress.techniques.linear_attention import swap_attention
    from textcompress.techniques.quantization_aware import fake_quantized

    from tests.conftest import tiny_model_config

    build = {"gelu_new": lambda: TextClassifier(replace(tiny_model_config(), hidden_act="gelu_new")),
             "qat": lambda: fake_quantized(TextClassifier(tiny_model_config())),
             "performer": lambda: swap_attention(TextClassifier(tiny_model_config()), "performer"),
             "gru": lambda: RecurrentClassifier(RecurrentConfig(vocab_size=50, embedding_size=8, num_labels=2, hidden_size=8, cell="gru")),
             "cnn": lambda: ConvClassifier(ConvConfig(vocab_size=50, embedding_size=8, num_labels=2))}
    model = build[kind]().eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    back = torch.load(buffer, weights_only=False)
    ids = torch.tensor([[2, 10, 20, 3]])
    assert torch.equal(back(ids, torch.ones_like(ids)), model(ids, torch.ones_like(ids)))


def test_a_process_computing_a_prefix_makes_another_wait_for_it(tmp_path):
    import threading

    from textcompress.techniques.prefix_store import PrefixStore

    store = PrefixStore(tmp_path, tmp_path, tmp_path, tmp_path, ctx=None)
    order = []

    def second():
        with store.claim("k"):
            order.append("second has it")

    with store.claim("k"):
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(timeout=0.5)
        order.append("first done")
    waiter.join(timeout=10)
    assert order == ["first done", "second has it"]


def test_a_published_entry_is_not_replaced_by_a_second_writer(tmp_path):
    with atomic_new_dir(tmp_path / "entry") as tmp:
        (tmp / "state").write_text("first")
    with atomic_new_dir(tmp_path / "entry") as tmp:
        (tmp / "state").write_text("second")
    assert (tmp_path / "entry" / "state").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_gc_removes_entries_of_other_code_unused_ones_and_leftovers(inputs, tmp_path):
    stored = quick_run(inputs, tmp_path, "first")["stored_as"]
    root = tmp_path / "store" / PREFIXES
    entry = read_json(root / stored / "entry.json")
    for name, code, age_days in (("old-code", "0" * 64, 0), ("unused", entry["code"], 40)):
        (root / name).mkdir()
        (root / name / "state.pt").write_bytes(b"x" * 10)
        (root / name / "entry.json").write_text(json.dumps({**entry, "key": name, "code": code}))
        os.utime(root / name / "entry.json", (time.time() - age_days * 86400,) * 2)
    leftover = root / f".{stored}.tmp-dead"
    leftover.mkdir()
    os.utime(leftover, (time.time() - 2 * 3600,) * 2)

    dry = prune(root, max_age_days=30, dry_run=True)
    assert dry["removed"] == {"incomplete": [leftover.name], "other code": ["old-code"], "unused": ["unused"]}
    assert dry["kept"] == 1 and (root / "old-code").is_dir()
    prune(root, max_age_days=30)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [stored]
    assert quick_run(inputs, tmp_path, "again")["source"] == "store"
