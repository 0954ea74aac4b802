"""End to end from Hugging Face checkpoints: a RoBERTa encoder fine-tuned on sentence pairs, and a
fine-tuned DistilBERT classifier taken as the teacher as it is. Both are tiny random checkpoints
saved by transformers' own `save_pretrained`; nothing is mocked."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from tests.conftest import tiny_sentiment_rows
from tests.e2e.tiny_project import build_tiny_project, write_hf_checkpoint

QUANTIZE = [{"quantize": {"mode": "dynamic"}}]


def pair_rows(n: int, seed: int) -> list[tuple[str, str, int]]:
    """(first, second, label): the label is the second sentence's sentiment, the first a distractor,
    so the model must tell the segments apart."""
    firsts, seconds = tiny_sentiment_rows(n, seed + 100), tiny_sentiment_rows(n, seed)
    random.Random(seed).shuffle(firsts)
    return [(a, b, label) for (a, _), (b, label) in zip(firsts, seconds)]


def run_pipeline(project):
    from flows.pipeline import pipeline

    cwd = os.getcwd()
    try:
        return pipeline(project_dir=str(project), pull=True)
    finally:
        os.chdir(cwd)


@pytest.mark.e2e
def test_a_converted_roberta_learns_sentence_pairs_and_its_champion_serves_them(tmp_path_factory, prefect_harness):
    import mlflow
    import onnxruntime as ort
    import pandas as pd
    from transformers import AutoConfig, AutoTokenizer

    root = tmp_path_factory.mktemp("e2e-roberta")
    write_hf_checkpoint(root / "roberta", "roberta", classifier=False)
    project = build_tiny_project(root, {
        "teacher": [], "int8-dynamic": QUANTIZE,
        "trim-distill-l1": [{"trim_vocab": {"min_count": 1}},
                            {"distill": {"student": "bert", "layers": 1, "epochs": 3, "lr": 3e-3, "batch_size": 16}},
                            *QUANTIZE]},
        sections={"data": {"text_pair_column": "second"}, "teach": {"epochs": 8},
                  "promotion": {"registered_model": "tiny-pairs", "max_accuracy_drop": 10.0}},
        rows=(pair_rows(300, 1), pair_rows(60, 2)), base=root / "roberta")
    result = run_pipeline(project)
    assert result["failed"] == {}
    teacher_config = json.loads((project / "artifacts" / "teacher" / "config.json").read_text())
    assert teacher_config["position_offset"] == 2 and teacher_config["segment_separator"] == 3  # RoBERTa, [SEP]
    report = json.loads((project / "reports" / "candidates.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert {n: r["status"] for n, r in rows.items()} == {"teacher": "ok", "int8-dynamic": "ok", "trim-distill-l1": "ok"}
    assert rows["teacher"]["accuracy"] > 0.8 and rows["teacher"]["f1"] is not None  # far above guessing

    # The student with a trimmed vocabulary (its separator has a new id), registered and served,
    # and its folder as Optimum reads it: the tokenizer encodes the pair, ONNX Runtime runs on the
    # inputs the graph declares, and the labels are the registered model's.
    pairs = [("the plot was awful .", "the movie was really great ."), ("the film was great .", "the story was dull .")]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    version = next(v for v in mlflow.MlflowClient().search_model_versions("name='tiny-pairs'")
                   if v.tags["candidate"] == "trim-distill-l1")
    served = mlflow.pyfunc.load_model(f"models:/tiny-pairs/{version.version}").predict(
        pd.DataFrame({"text": [a for a, _ in pairs], "text_pair": [b for _, b in pairs]}))
    folder = project / "artifacts" / "onnx" / "trim-distill-l1"
    config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()})[0]
    assert [config.id2label[int(i)] for i in logits.argmax(-1)] == [str(label) for label in served["label"]]
    assert list(served["label"]) == [1, 0]


@pytest.mark.e2e
def test_a_finetuned_distilbert_is_the_teacher_as_it_is_and_is_compressed(tmp_path_factory, prefect_harness):
    import torch

    from tests.conftest import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("e2e-distilbert")
    reference = write_hf_checkpoint(root / "distilbert", "distilbert", initializer_range=0.3)
    project = build_tiny_project(root, {
        "teacher": [], "int8-dynamic": QUANTIZE,
        "distill-l1": [{"distill": {"student": "bert", "layers": 1, "epochs": 2, "lr": 3e-3, "batch_size": 16}}]},
        sections={"teach": {"finetuned_teacher": str(root / "distilbert")},
                  "promotion": {"registered_model": "tiny-distilbert", "max_accuracy_drop": 50.0}})
    result = run_pipeline(project)
    assert result["failed"] == {}
    metrics = json.loads((project / "artifacts" / "teacher_metrics.json").read_text())
    assert metrics["history"] == []  # not fine-tuned
    # Its accuracy is the checkpoint's own, as transformers computes it on the validation rows.
    validation = [line.split("\t") for line in (project / "data" / "validation.tsv").read_text().splitlines()[1:]]
    encoded = [build_tiny_tokenizer().encode(text).ids for text, _ in validation]
    with torch.no_grad():
        predicted = [int(reference(input_ids=torch.tensor([ids])).logits.argmax()) for ids in encoded]
    expected = float(np.mean([p == int(label) for p, (_, label) in zip(predicted, validation)]))
    assert metrics["validation_accuracy"] == pytest.approx(expected)
    report = json.loads((project / "reports" / "candidates.json").read_text())
    assert {r["name"]: r["status"] for r in report["rows"]} == {"teacher": "ok", "int8-dynamic": "ok", "distill-l1": "ok"}
    student = json.loads((project / "artifacts" / "compressed" / "distill-l1" / "config.json").read_text())
    assert student["num_layers"] == 1 and student["head_activation"] == "relu" and student["type_vocab_size"] == 0


@pytest.mark.e2e
def test_a_deberta_teacher_runs_in_transformers_and_is_distilled_into_students_of_their_own(tmp_path_factory,
                                                                                           prefect_harness):
    from tests.conftest import SPECIAL_TOKENS, WORDS, build_tiny_tokenizer
    from tests.e2e.tiny_project import write_tiny_base

    root = tmp_path_factory.mktemp("e2e-deberta")
    write_hf_checkpoint(root / "deberta", "deberta-v2", classifier=False)
    # The BERT student's base has a tokenizer of its own: the same words under other ids.
    student_base = write_tiny_base(root / "student-base")
    other_ids = {token: i for i, token in enumerate(SPECIAL_TOKENS + WORDS[::-1])}
    build_tiny_tokenizer(other_ids).save(str(student_base / "tokenizer.json"))
    bert_student = {"student": "bert", "student_base": str(student_base), "layers": 1, "epochs": 3, "lr": 3e-3,
                    "batch_size": 16}
    project = build_tiny_project(root, {
        "teacher": [], "int8-dynamic": QUANTIZE,
        "bert-pruned-int8": [{"distill": bert_student}, {"prune_structured": {"heads": 0.5, "epochs": 0}}, *QUANTIZE],
        "gru": [{"distill": {"student": "gru", "layers": 1, "hidden_size": 16, "embedding_size": 16, "epochs": 3,
                             "lr": 3e-3, "batch_size": 16}}]},
        sections={"teach": {"epochs": 5}, "promotion": {"registered_model": "tiny-deberta", "max_accuracy_drop": 10.0}},
        base=root / "deberta")
    result = run_pipeline(project)
    assert result["failed"] == {}
    teacher = json.loads((project / "artifacts" / "teacher" / "config.json").read_text())
    assert teacher["architecture"] == "transformers" and teacher["hf"]["model_type"] == "deberta-v2"
    assert json.loads((project / "artifacts" / "onnx" / "teacher" / "export.json").read_text())["parity_ok"]
    report = {r["name"]: r for r in json.loads((project / "reports" / "candidates.json").read_text())["rows"]}
    assert {n: r["status"] for n, r in report.items()} == {n: "ok" for n in ("teacher", "int8-dynamic", "bert-pruned-int8", "gru")}
    assert report["teacher"]["accuracy"] > 0.8 and report["bert-pruned-int8"]["accuracy"] > 0.8
    student_folder = project / "artifacts" / "onnx" / "bert-pruned-int8"
    assert (student_folder / "tokenizer.json").read_bytes() == (student_base / "tokenizer.json").read_bytes()
    exported = json.loads((student_folder / "config.json").read_text())
    assert exported["model_type"] == "bert" and exported["textcompress"]["layer_heads"] == [2]
    assert json.loads((project / "artifacts" / "onnx" / "teacher" / "config.json").read_text())["model_type"] == "deberta-v2"
