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


def test_auto_picks_the_cpu_without_a_gpu_and_names_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
