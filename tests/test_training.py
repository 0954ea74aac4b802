"""Tests for textcompress.training: a run is reproducible, and a killed run resumes from its
checkpoint to exactly the weights the uninterrupted run ends with (on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textcompress.data import load_split
from textcompress.models.encoder import TextClassifier
from textcompress.training import Checkpoint, accuracy, predict_logits, train_classifier

from tests.conftest import tiny_model_config

SETTINGS = {"epochs": 2, "lr": 3e-3, "batch_size": 16, "seed": 0}  # dropout on: the random state must resume too


class Killed(Exception):
    pass


def fresh_model() -> TextClassifier:
    torch.manual_seed(0)
    return TextClassifier(tiny_model_config(layers=1))


def train(split, checkpoint=None, kill_at=None, validation=None):
    model = fresh_model()

    def hook(step, total):
        if step == kill_at:
            raise Killed(step)

    history = train_classifier(model, split, **SETTINGS, checkpoint=checkpoint, step_hook=hook, validation=validation)
    return model, history


@pytest.fixture(scope="module")
def splits(tiny_prepared):
    return load_split(tiny_prepared, "train"), load_split(tiny_prepared, "validation")


@pytest.fixture(scope="module")
def uninterrupted(splits):
    return train(splits[0], validation=splits[1])


def test_two_identical_runs_give_identical_weights_and_metrics(splits, uninterrupted):
    again, history = train(splits[0], validation=splits[1])
    first, first_history = uninterrupted
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert history == first_history
    assert accuracy(predict_logits(again, splits[1]), splits[1].labels) == first_history[-1]["validation_accuracy"]


@pytest.mark.parametrize("kill_at", [7, 15 + 3])  # mid-epoch 1; mid-epoch 2, after the epoch-end save (15 steps an epoch)
def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_weights(splits, uninterrupted, tmp_path, kill_at):
    checkpoint = Checkpoint(tmp_path / "run.pt", every=5, key="tiny")
    with pytest.raises(Killed):
        train(splits[0], checkpoint, kill_at=kill_at)
    saved = torch.load(tmp_path / "run.pt", weights_only=False)
    assert saved["step"] == (kill_at // 5) * 5 or saved["step"] == 15  # the last save before the kill
    resumed, history = train(splits[0], checkpoint, validation=splits[1])
    first, first_history = uninterrupted
    for (name, a), b in zip(first.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["steps"] for h in history] == [h["steps"] for h in first_history]
    assert not (tmp_path / "run.pt").exists()  # removed once training is done


def test_a_checkpoint_of_another_run_is_not_resumed(splits, uninterrupted, tmp_path):
    with pytest.raises(Killed):
        train(splits[0], Checkpoint(tmp_path / "run.pt", every=5, key="other settings"), kill_at=12)
    resumed, _ = train(splits[0], Checkpoint(tmp_path / "run.pt", every=5, key="tiny"))
    first, _ = uninterrupted
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), resumed.state_dict().values()))


def test_a_torn_checkpoint_file_starts_the_run_over(tmp_path):
    (tmp_path / "run.pt").write_bytes(b"not a checkpoint")
    assert Checkpoint(tmp_path / "run.pt", every=5, key="tiny").load() is None
    assert not (tmp_path / "run.pt").exists()


# ---------------------------------------------------------------------------
# Two CPU processes over gloo (what torchrun starts)


def _train_one_rank(rank: int, world: int, port: int, prepared: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = fresh_model()
        history = train_classifier(model, load_split(prepared, "train"), **SETTINGS)
        torch.save({"state": model.state_dict(), "history": history}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_train_one_model_on_half_the_batches_each(tiny_prepared, splits, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_train_one_rank, args=(2, port, str(tiny_prepared), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for (name, a), b in zip(ranks[0]["state"].items(), ranks[1]["state"].values()):
        assert torch.equal(a, b), name  # gradients were averaged: the replicas never diverged
    assert ranks[0]["history"][-1]["steps"] == 2 * (15 // 2)  # 15 batches an epoch, 7 per process
    model = fresh_model()
    untrained = accuracy(predict_logits(model, splits[1]), splits[1].labels)
    model.load_state_dict(ranks[0]["state"])
    assert accuracy(predict_logits(model, splits[1]), splits[1].labels) > max(0.75, untrained)


# ---------------------------------------------------------------------------
# Precision: bf16 autocast with fp32 master weights


def test_precision_names_the_autocast_dtype_and_auto_follows_the_hardware():
    from textcompress.errors import RecipeError
    from textcompress.training import autocast_dtype, bf16_supported

    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if bf16_supported(cpu) else None)
    with pytest.raises(RecipeError, match="unknown training precision 'fp16'.*Fix: use one of auto, fp32, bf16"):
        autocast_dtype("fp16", cpu)


def test_bf16_training_keeps_fp32_weights_learns_and_differs_from_fp32(splits, uninterrupted):
    train_split, validation = splits
    model = fresh_model()
    history = train_classifier(model, train_split, **SETTINGS, validation=validation, precision="bf16")
    fp32_model, fp32_history = uninterrupted
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the master weights are never rounded to bf16
    # The forward passes did run in bf16: the same seed and batches end elsewhere than in fp32 ...
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), fp32_model.state_dict().values()))
    # ... along the same path: each epoch's loss within 1 % of fp32's, its accuracy within 3 of the 80 rows.
    for low, full in zip(history, fp32_history, strict=True):
        assert low["loss"] == pytest.approx(full["loss"], rel=0.01)
        assert abs(low["validation_accuracy"] - full["validation_accuracy"]) <= 3 / len(validation)


def test_bf16_inference_gives_the_fp32_logits_within_bf16_rounding(splits, uninterrupted):
    model, _ = uninterrupted
    validation = splits[1]
    full = predict_logits(model, validation)
    low = predict_logits(model, validation, precision="bf16")
    assert low.dtype == full.dtype == np.float32
    assert not np.array_equal(low, full)  # the forward pass did run in bf16
    # bf16 keeps 8 significant bits: logits of a few units move by hundredths, labels almost never.
    np.testing.assert_allclose(low, full, atol=0.1)
    assert (low.argmax(-1) == full.argmax(-1)).mean() >= 0.95
