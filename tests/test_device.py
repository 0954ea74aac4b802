"""Training on the GPU (`runtime.device: auto`): the same loop, the model back on the CPU after,
bf16 autocast where the GPU has it (`runtime.precision: auto`) with fp32 weights. Skipped where there
is no CUDA device (CI); run on a GPU machine (passed on an H200, 2026-11-30)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textcompress.data import load_split
from textcompress.models.encoder import TextClassifier
from textcompress.training import accuracy, autocast_dtype, predict_logits, resolve_device, train_classifier

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


# ---------------------------------------------------------------------------
# Precision on the GPU

SETTINGS = {"epochs": 2, "lr": 3e-3, "batch_size": 16, "seed": 0}


@pytest.fixture(scope="module")
def splits(tiny_prepared):
    return load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")


def trained(splits, device: str, precision: str = "fp32", teacher_logits=None, epochs: int = 2):
    torch.manual_seed(0)
    model = TextClassifier(tiny_model_config(layers=1))
    history = train_classifier(model, splits[0], **{**SETTINGS, "epochs": epochs}, validation=splits[1], device=device,
                               precision=precision, teacher_logits=teacher_logits)
    return model, history


@cuda
def test_auto_precision_is_bf16_on_a_gpu_that_has_it():
    gpu = torch.device("cuda")
    assert autocast_dtype("auto", gpu) is (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)


@cuda
@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_gpu_training_follows_the_cpu_run_and_keeps_fp32_weights(splits, precision):
    cpu_model, cpu_history = trained(splits, "cpu")
    gpu_model, gpu_history = trained(splits, "cuda", precision)
    assert {p.dtype for p in gpu_model.parameters()} == {torch.float32}
    # Same seed, same batches: each epoch's loss within 2 % of the CPU run's (GPU kernels and bf16
    # round differently), its validation accuracy within 3 of the 80 rows.
    for gpu, cpu in zip(gpu_history, cpu_history, strict=True):
        assert gpu["loss"] == pytest.approx(cpu["loss"], rel=0.02), (gpu, cpu)
        assert abs(gpu["validation_accuracy"] - cpu["validation_accuracy"]) <= 3 / len(splits[1])


@cuda
def test_distillation_on_the_gpu_learns_from_teacher_logits(splits):
    teacher, _ = trained(splits, "cpu", epochs=8)
    logits = predict_logits(teacher, splits[0])
    student, _ = trained(splits, "cuda", "auto", teacher_logits=logits, epochs=8)
    agreement = float((predict_logits(student, splits[1]).argmax(-1) == predict_logits(teacher, splits[1]).argmax(-1)).mean())
    teacher_accuracy = accuracy(predict_logits(teacher, splits[1]), splits[1].labels)
    assert agreement >= 0.9, agreement
    assert accuracy(predict_logits(student, splits[1]), splits[1].labels) >= teacher_accuracy - 5 / len(splits[1])
