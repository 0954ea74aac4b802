"""An exported candidate loads as Hugging Face Optimum's ONNX classifier folders do: AutoConfig
gives its labels, AutoTokenizer its tokenizer, and ONNX Runtime fed as Optimum feeds it gives the
labels textcompress's own inference gives."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from transformers import AutoConfig, AutoTokenizer

from tests.conftest import export_model_dir
from textcompress.deploy.hf_folder import transformers_config, write_transformers_files
from textcompress.deploy.inference import OnnxTextClassifier
from textcompress.models.encoder import load_bundle
from textcompress.models.recurrent import RecurrentClassifier, RecurrentConfig

TEXTS = ["the movie was great .", "the plot was awful and the acting was boring", "i loved this film !", "dull ."]
MAX_LENGTH = 16


@pytest.fixture
def exported(tiny_teacher, tmp_path):
    model, labels = load_bundle(tiny_teacher)
    out = export_model_dir(model, tiny_teacher, tmp_path / "candidate")
    write_transformers_files(out, model, labels, out / "tokenizer.json", MAX_LENGTH)
    return out, model, labels


def test_auto_config_reads_the_labels_and_the_real_sizes(exported):
    folder, model, labels = exported
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "bert" and config.id2label == {i: str(label) for i, label in enumerate(labels)}
    assert config.label2id == {str(label): i for i, label in enumerate(labels)}
    assert (config.hidden_size, config.num_hidden_layers) == (model.config.hidden_size, model.config.num_layers)


def test_onnx_runtime_fed_as_optimum_feeds_it_gives_textcompress_s_labels(exported):
    folder, _, _ = exported
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.is_fast and tokenizer.model_input_names == ["input_ids", "attention_mask"]
    encoded = tokenizer(TEXTS, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
    assert [o.name for o in session.get_outputs()] == ["logits"]
    logits = session.run(["logits"], feed)[0]
    config = AutoConfig.from_pretrained(folder)
    theirs = [config.id2label[int(i)] for i in logits.argmax(-1)]
    ours, _ = OnnxTextClassifier(folder, max_length=MAX_LENGTH).predict(TEXTS)
    assert theirs == [str(label) for label in ours]


def test_the_tokenizer_json_every_stage_used_is_left_as_it_was(tiny_teacher, tmp_path):
    model, labels = load_bundle(tiny_teacher)
    out = export_model_dir(model, tiny_teacher, tmp_path / "candidate")
    before = (out / "tokenizer.json").read_bytes()
    write_transformers_files(out, model, labels, out / "tokenizer.json", MAX_LENGTH)
    assert (out / "tokenizer.json").read_bytes() == before
    assert json.loads((out / "special_tokens_map.json").read_text())["cls_token"] == "[CLS]"


def test_a_recurrent_candidate_keeps_its_labels_and_names_its_architecture():
    model = RecurrentClassifier(RecurrentConfig(vocab_size=10, embedding_size=4, hidden_size=4))
    config = transformers_config(model, ["neg", "pos"])
    assert config["id2label"] == {"0": "neg", "1": "pos"} and "model_type" not in config
    assert config["textcompress"]["architecture"] == "recurrent" and config["textcompress"]["hidden_size"] == 4
