"""Tests for the `teach` stage's recurrent teacher: built over the base's word pieces."""

from __future__ import annotations

import copy

import pytest
import torch

from textcompress.config import DEFAULTS
from textcompress.errors import TextcompressError
from textcompress.models.checkpoints import from_pretrained
from textcompress.models.recurrent import RecurrentClassifier
from textcompress.stages.teach import recurrent_teacher

from tests.e2e.tiny_project import write_hf_checkpoint, write_tiny_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_tiny_base(tmp_path_factory.mktemp("base") / "tiny-bert")


def teach_params(base, **recurrent) -> dict:
    params = copy.deepcopy(DEFAULTS)
    params["base_model"] = str(base)
    params["teach"]["architecture"] = "gru"
    params["teach"]["recurrent"].update(hidden_size=8, **recurrent)
    return params


def test_the_recurrent_teacher_starts_from_the_bases_word_pieces(base):
    model = recurrent_teacher(teach_params(base), num_labels=3)
    table = from_pretrained(base, 3).embeddings.word_embeddings.weight
    assert isinstance(model, RecurrentClassifier) and model.config.cell == "gru" and model.config.num_labels == 3
    torch.testing.assert_close(model.word_embeddings.weight, table)


def test_a_narrower_embedding_is_the_tables_principal_projection(base):
    model = recurrent_teacher(teach_params(base, embedding_size=4), num_labels=2)
    table = from_pretrained(base, 2).embeddings.word_embeddings.weight.detach().double()
    centred = table - table.mean(0)
    # The projection keeps the top-4 principal subspace: its centred energy is the top-4 eigenvalues' sum.
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred).flip(0)
    projected = model.word_embeddings.weight.detach().double()
    kept = ((projected - projected.mean(0)) ** 2).sum()
    assert projected.shape == (table.shape[0], 4)
    assert kept == pytest.approx(float(eigenvalues[:4].sum()), rel=1e-4)


def test_embeddings_scratch_leaves_the_table_random(base):
    model = recurrent_teacher(teach_params(base, embeddings="scratch"), num_labels=2)
    table = from_pretrained(base, 2).embeddings.word_embeddings.weight
    assert not torch.allclose(model.word_embeddings.weight, table)


def test_teach_with_two_processes_runs_under_torchrun_and_writes_one_teacher(base, tiny_prepared, tmp_path):
    import json
    import subprocess
    import sys

    import yaml

    from textcompress.models.encoder import load_bundle

    params = {"seed": 0, "base_model": str(base), "teach": {"epochs": 1, "lr": 3.0e-3, "batch_size": 16},
              "runtime": {"processes": 2, "threads": 1, "checkpoint_every": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "textcompress.stages.teach", "--params", str(tmp_path / "params.yaml"),
                           "--prepared", str(tiny_prepared), "--out", str(tmp_path / "teacher"),
                           "--metrics", str(tmp_path / "metrics.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["history"][-1]["steps"] == 15 // 2
    from textcompress.data import load_labels

    model, labels = load_bundle(tmp_path / "teacher")
    assert labels == load_labels(tiny_prepared) and model.config.num_layers == 2


def test_a_killed_teach_resumes_from_its_checkpoint_to_the_uninterrupted_teacher(base, tiny_prepared, tmp_path):
    import json
    import subprocess
    import sys
    import time

    import yaml
    from safetensors.torch import load_file

    def command(name: str, every: int) -> list[str]:
        params = {"seed": 0, "base_model": str(base), "teach": {"epochs": 8, "lr": 3.0e-3, "batch_size": 16},
                  "runtime": {"threads": 1, "checkpoint_every": every}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(params))
        return [sys.executable, "-m", "textcompress.stages.teach", "--params", str(tmp_path / f"{name}.yaml"),
                "--prepared", str(tiny_prepared), "--out", str(tmp_path / name / "teacher"),
                "--metrics", str(tmp_path / name / "metrics.json"), "--checkpoint", str(tmp_path / name / "teach.pt")]

    killed = subprocess.Popen(command("run", 5), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "teach.pt").exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    killed.kill()
    killed.wait()
    assert (tmp_path / "run" / "teach.pt").exists() and not (tmp_path / "run" / "teacher").exists()

    resumed = subprocess.run(command("run", 5), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from the checkpoint at step" in resumed.stderr
    reference = subprocess.run(command("reference", 0), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-2000:]
    got, expected = (load_file(str(tmp_path / n / "teacher" / "model.safetensors")) for n in ("run", "reference"))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    accuracy = [json.loads((tmp_path / n / "metrics.json").read_text())["validation_accuracy"] for n in ("run", "reference")]
    assert accuracy[0] == accuracy[1]
    assert not (tmp_path / "run" / "teach.pt").exists()


# ---------------------------------------------------------------------------
# A fine-tuned Hugging Face classifier as the teacher

def test_a_finetuned_classifier_is_adopted_as_it_is_with_its_outputs_in_the_datas_label_order(tmp_path):
    from textcompress.stages.teach import adopted_teacher

    reference = write_hf_checkpoint(tmp_path / "clf", "distilbert", num_labels=2, initializer_range=0.3,
                                    id2label={0: "pos", 1: "neg"}, label2id={"pos": 0, "neg": 1})
    ids, mask = torch.tensor([[2, 30, 31, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    model = adopted_teacher(str(tmp_path / "clf"), ["neg", "pos"], separator=None)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits[:, [1, 0]]
        torch.testing.assert_close(model(ids, mask), expected, atol=1e-5, rtol=0)


def test_a_classifier_of_other_labels_is_refused_naming_both_sides(tmp_path):
    from textcompress.stages.teach import adopted_teacher

    write_hf_checkpoint(tmp_path / "clf", "bert", num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"},
                        label2id={"NEGATIVE": 0, "POSITIVE": 1})
    with pytest.raises(TextcompressError, match=r"its labels \['NEGATIVE', 'POSITIVE'\] do not match the data's "
                                                r"\['neg', 'pos'\]\. Fix: name the outputs in its id2label"):
        adopted_teacher(str(tmp_path / "clf"), ["neg", "pos"], separator=None)


def test_a_bare_encoder_is_not_taken_as_a_finetuned_teacher(tmp_path):
    from textcompress.stages.teach import adopted_teacher

    write_hf_checkpoint(tmp_path / "enc", "roberta", classifier=False)
    with pytest.raises(TextcompressError, match=r"is not a fine-tuned classifier.*Fix: set it as base_model"):
        adopted_teacher(str(tmp_path / "enc"), [0, 1], separator=None)


@pytest.mark.parametrize("data_labels, keeps_head", [([0, 1], True), (["neg", "pos"], False)])
def test_a_classifier_as_base_model_keeps_its_head_only_for_the_same_labels(tmp_path, data_labels, keeps_head):
    from textcompress.stages.teach import base_classifier

    write_hf_checkpoint(tmp_path / "clf", "electra", num_labels=2)
    params = copy.deepcopy(DEFAULTS)
    params["base_model"] = str(tmp_path / "clf")
    model = base_classifier(params, data_labels, separator=3)
    assert (model.pooler is not None) == keeps_head
    assert model.config.pooling == ("cls" if keeps_head else "mean") and model.config.segment_separator == 3
