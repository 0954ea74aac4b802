"""Tests for textcompress.deploy.serving: the input contract and the MLflow pyfunc end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import export_model_dir
from textcompress.deploy.serving import MAX_BATCH, OnnxTextModel, ServingInputError, texts_from_input

SENTENCES = ["the movie was great .", "the plot was awful ."]


# ---------------------------------------------------------------------------
# texts_from_input


def test_accepts_a_dataframe_with_a_text_column():
    frame = pd.DataFrame({"text": SENTENCES, "id": [1, 2]})
    assert texts_from_input(frame) == SENTENCES


def test_accepts_a_list_of_strings():
    assert texts_from_input(list(SENTENCES)) == SENTENCES


def test_accepts_a_dict_of_texts_and_a_dict_with_one_text():
    assert texts_from_input({"text": list(SENTENCES)}) == SENTENCES
    assert texts_from_input({"text": "a good film"}) == ["a good film"]


def test_refuses_a_dataframe_without_a_text_column():
    with pytest.raises(ServingInputError, match="`text` column") as err:
        texts_from_input(pd.DataFrame({"sentence": SENTENCES}))
    assert "sentence" in str(err.value)


def test_refuses_a_non_string_row_and_names_it():
    with pytest.raises(ServingInputError, match=r"row 1\b.*int"):
        texts_from_input(["fine", 42, "also fine"])
    with pytest.raises(ServingInputError, match=r"row 2\b"):
        texts_from_input(pd.DataFrame({"text": ["a", "b", None]}))


def test_refuses_more_than_max_batch_texts():
    assert len(texts_from_input(["x"] * MAX_BATCH)) == MAX_BATCH
    with pytest.raises(ServingInputError, match=str(MAX_BATCH)):
        texts_from_input(["x"] * (MAX_BATCH + 1))


def test_refuses_an_unreadable_input():
    with pytest.raises(ServingInputError):
        texts_from_input(12345)


PAIRS = [("the movie was great .", "the film was great ."), ("the plot was dull .", "i loved the music .")]


def test_a_pair_model_reads_text_and_text_pair_columns_dicts_and_lists_of_pairs():
    frame = pd.DataFrame({"text": [a for a, _ in PAIRS], "text_pair": [b for _, b in PAIRS]})
    assert texts_from_input(frame, pairs=True) == PAIRS
    assert texts_from_input({"text": [a for a, _ in PAIRS], "text_pair": [b for _, b in PAIRS]}, pairs=True) == PAIRS
    assert texts_from_input([list(p) for p in PAIRS], pairs=True) == PAIRS


def test_a_pair_model_refuses_single_sentences_and_says_what_to_send():
    with pytest.raises(ServingInputError, match=r"send a `text` column and a `text_pair` column"):
        texts_from_input(pd.DataFrame({"text": SENTENCES}), pairs=True)
    with pytest.raises(ServingInputError, match=r"row 0: this model reads sentence pairs; send \[text, text_pair\]"):
        texts_from_input(list(SENTENCES), pairs=True)
    with pytest.raises(ServingInputError, match=r"row 1: text_pair must be a string, got "):
        texts_from_input(pd.DataFrame({"text": ["a", "b"], "text_pair": ["c", None]}), pairs=True)
    with pytest.raises(ServingInputError, match=r"2 texts but 1 text_pairs"):
        texts_from_input({"text": ["a", "b"], "text_pair": ["c"]}, pairs=True)


# ---------------------------------------------------------------------------
# The pyfunc, logged to and loaded back from a temporary MLflow store


@pytest.fixture(scope="module")
def model_dir(tiny_teacher, tmp_path_factory):
    from textcompress.models.encoder import load_bundle

    return export_model_dir(load_bundle(tiny_teacher)[0], tiny_teacher, tmp_path_factory.mktemp("serving") / "model_dir")


@pytest.fixture(scope="module")
def loaded_pyfunc(model_dir, tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    try:
        experiment = mlflow.create_experiment("serving-test", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(name="model", python_model=OnnxTextModel(),
                                           artifacts={"model_dir": str(model_dir)},
                                           pip_requirements=["onnxruntime", "tokenizers", "pandas", "numpy", "mlflow"])
        yield mlflow.pyfunc.load_model(info.model_uri)
    finally:
        mlflow.set_tracking_uri(previous)


def test_logged_pyfunc_predicts_labels_from_raw_sentences(loaded_pyfunc, model_dir):
    labels = json.loads((model_dir / "labels.json").read_text())
    out = loaded_pyfunc.predict(pd.DataFrame({"text": SENTENCES}))

    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["label", "probability", "empty_input"]
    assert len(out) == 2
    assert set(out["label"]) <= set(labels)
    assert np.all((out["probability"] > 0) & (out["probability"] <= 1))
    # With two classes the predicted label's probability is at least one half.
    assert np.all(out["probability"] >= 0.5)
    # The tiny teacher learns the tiny task perfectly: positive word -> label 1, negative -> 0.
    assert out["label"].tolist() == [labels[1], labels[0]]
    assert out["empty_input"].tolist() == [False, False]


def test_logged_pyfunc_flags_an_empty_input(loaded_pyfunc):
    out = loaded_pyfunc.predict(pd.DataFrame({"text": ["", "   ", SENTENCES[0]]}))
    assert out["empty_input"].tolist() == [True, True, False]
    assert np.all((out["probability"] > 0) & (out["probability"] <= 1))


def test_logged_pyfunc_refuses_a_request_breaking_the_contract(loaded_pyfunc):
    with pytest.raises(Exception, match="`text` column"):
        loaded_pyfunc.predict(pd.DataFrame({"sentence": SENTENCES}))


def test_in_process_scoring_takes_more_texts_than_one_request_may_hold(loaded_pyfunc):
    texts = [SENTENCES[i % 2] for i in range(MAX_BATCH + 5)]
    out = loaded_pyfunc.predict(pd.DataFrame({"text": texts}))
    assert len(out) == MAX_BATCH + 5
    alone = loaded_pyfunc.predict(pd.DataFrame({"text": SENTENCES}))["label"].tolist()
    assert out["label"].tolist()[:2] == alone and out["label"].tolist()[MAX_BATCH:MAX_BATCH + 2] == alone  # both chunks


def test_over_http_a_request_keeps_its_limit(loaded_pyfunc, monkeypatch):
    from textcompress.deploy.serving import SERVING_ENVIRONMENT

    monkeypatch.setenv(SERVING_ENVIRONMENT, "true")  # what MLflow's scoring server sets in its process
    with pytest.raises(Exception, match=f"the limit is {MAX_BATCH}"):
        loaded_pyfunc.predict(pd.DataFrame({"text": ["x"] * (MAX_BATCH + 1)}))
