"""Training on the GPU (`runtime.device: auto`): the same loop, the model back on the CPU after.
Skipped where there is no CUDA device (CI); run on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textcompress.data import load_split
from textcompress.models.encoder import TextClassifier
from textcompress.training import predict_logits, resolve_device, train_classifier

from tests.conftest import tiny_model_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.mark.parametrize("has_gpu,expected", [(False, "cpu"), (True, "cuda")])
def test_auto_picks_the_gpu_when_there_is_one_and_names_pass_through(monkeypatch, has_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    assert resolve_device("auto") == torch.device(expected) and resolve_device(None) == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("cuda:1") == torch.device("cuda", 1)


@cuda
def test_training_on_the_gpu_learns_and_returns_the_model_on_the_cpu(tiny_prepared):
    train, validation = load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")
    torch.manual_seed(0)
    model = TextClassifier(tiny_model_config())
    history = train_classifier(model, train, epochs=4, lr=3e-3, batch_size=16, seed=0, validation=validation, device="auto")
    assert next(model.parameters()).device.type == "cpu"
    assert history[-1]["loss"] < history[0]["loss"]
    gpu = predict_logits(model, validation, device="cuda")
    cpu = predict_logits(model, validation, device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
