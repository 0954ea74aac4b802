"""Fine-tuning and inference loops shared by `teach` and every recovery step.

One loop covers plain fine-tuning (hard labels) and logit distillation (soft labels
from cached teacher logits, mixed with the hard labels), so every family trains the
same way: AdamW, linear warm-up then linear decay, length-bucketed batches, seeded.
Richer objectives (hidden-state and attention distillation, in `textcompress.distill`)
plug in as a `loss_module`; schedules that act between steps (gradual pruning, random
feature redraws) plug in as a `step_hook`, so this loop, which the teacher depends on,
stays put while the families grow. A long run (the teacher) saves a `Checkpoint` every few
hundred steps, so a killed run resumes where it stopped and ends with the same weights.
Under `torchrun` (a process group is initialised) each process trains on its share of the
batches and DistributedDataParallel averages the gradients: gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import math
import os
import random
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from textcompress import faults
from textcompress.data import Split, length_bucketed_batches, pad_batch
from textcompress.errors import RecipeError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix products run natively here: a GPU that has them, or a CPU with
    AVX-512 BF16 or AMX (oneDNN's check); elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype forward passes autocast to while training (weights, optimizer state and
    gradients stay fp32), or None for plain fp32. `auto` takes bf16 where it is native."""
    from textcompress.config import PRECISIONS  # config imports the techniques, which import this module

    if precision not in PRECISIONS:
        raise RecipeError(None, f"unknown training precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and not bf16_supported(device)):
        return None
    return torch.bfloat16


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> torch.Tensor:
    """alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(student, labels) (Hinton et al.)."""
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / temperature, dim=-1),
        nn.functional.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean", log_target=True,
    ) * temperature**2
    hard = nn.functional.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


class Checkpoint:
    """One file holding a training run's state (weights, optimiser, schedule, position, random
    state), written atomically every `every` steps. `key` names the run (its data, params and
    seed): a checkpoint with another key is stale and is ignored and removed, never resumed."""

    def __init__(self, path: str | Path, every: int, key: str):
        self.path, self.every, self.key = Path(path), every, key

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception:  # a torn or foreign file: start over rather than fail
            state = None
        if not isinstance(state, dict) or state.get("key") != self.key:
            self.clear()
            return None
        return state

    def save(self, state: dict) -> None:
        from textcompress.fileio import atomic_path

        with atomic_path(self.path) as tmp:
            torch.save({**state, "key": self.key}, tmp)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def for_rank(self, rank: int) -> "Checkpoint":
        """Each process of a distributed run keeps its own file (its random state differs)."""
        return Checkpoint(self.path.with_name(f"{self.path.stem}.rank{rank}{self.path.suffix}"), self.every, self.key)


def join_process_group(device: str | None) -> str | None:
    """Under torchrun (WORLD_SIZE > 1): initialise the process group, NCCL with a GPU per process
    or gloo on CPU, and return this process's device; otherwise return `device` unchanged."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    gpu = resolve_device(device).type == "cuda"
    dist.init_process_group("nccl" if gpu else "gloo")
    if gpu:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def process_group() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless a torch.distributed process group is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_classifier(
    model: nn.Module,
    train: Split,
    *,
    epochs: float,
    lr: float,
    batch_size: int,
    warmup: float = 0.06,
    weight_decay: float = 0.01,
    seed: int = 42,
    teacher_logits: np.ndarray | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    validation: Split | None = None,
    desc: str = "train",
    loss_module: nn.Module | None = None,
    step_hook: Callable[[int, int], None] | None = None,
    device: str | None = "cpu",
    checkpoint: Checkpoint | None = None,
    precision: str = "fp32",
) -> list[dict]:
    """Train in place. With `teacher_logits` (rows aligned with `train`) the loss is KD; else CE.
    `loss_module(model, ids, mask, labels, index)` replaces both (its own parameters, such as
    projections, are trained too); `step_hook(step, total_steps)` runs after every update, gradients still in place.
    With `checkpoint`, resumes from its last save and removes it once training is done.
    `precision` (auto, fp32, bf16): bf16 autocasts the forward pass and the loss's inputs stay fp32.
    Returns one record per epoch (loss, and validation accuracy when given)."""
    seed_everything(seed)
    device = resolve_device(device)
    model.to(device)
    low_precision = autocast_dtype(precision, device)
    rank, world = process_group()
    forward = model
    if world > 1:
        if loss_module is not None:
            raise RecipeError(None, "distributed training runs the plain and logit-distillation losses only",
                              "set runtime.processes: 1 for a step with intermediate-layer losses")
        if checkpoint is not None:
            checkpoint = checkpoint.for_rank(rank)
        # Rank 0's initial weights are broadcast; every rank then draws its own dropout masks.
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        torch.manual_seed(seed + rank)
    if loss_module is not None:
        loss_module.to(device)
    lengths = [len(x) for x in train.input_ids]
    batches_per_epoch = math.ceil(len(train) / batch_size) // world  # this process's share
    total_steps = max(1, math.ceil(epochs * batches_per_epoch))
    warmup_steps = int(warmup * total_steps)
    trained = [p for p in model.parameters() if p.requires_grad]
    if loss_module is not None:
        trained += [p for p in loss_module.parameters() if p.requires_grad]
    no_decay = [p for p in trained if p.ndim < 2]
    decay = [p for p in trained if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / max(1, warmup_steps), max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))))
    soft = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32)).to(device) if teacher_logits is not None else None

    history, step, first_epoch, resumed_done, resumed_running = [], 0, 0, 0, 0.0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        history, step, first_epoch = saved["history"], saved["step"], saved["epoch"]
        resumed_done, resumed_running = saved["done"], saved["running"]
        torch.set_rng_state(saved["rng"])  # the same dropout masks as the run that was stopped
        print(f"{desc}: resuming from the checkpoint at step {step} of {total_steps}", file=sys.stderr)

    def save_checkpoint(epoch: int, done: int, running: float) -> None:
        checkpoint.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "history": history, "step": step, "epoch": epoch,
                         "done": done, "running": running, "rng": torch.get_rng_state()})

    for epoch in range(first_epoch, math.ceil(epochs)):
        model.train()
        skip = resumed_done if epoch == first_epoch else 0
        batches = length_bucketed_batches(lengths, batch_size, shuffle=True, seed=seed + epoch)
        batches = batches[: len(batches) // world * world][rank::world]  # the same order everywhere, dealt out
        batches = batches[: total_steps - (step - skip)]
        running = resumed_running if skip else 0.0
        # Resuming mid-epoch: the batches before the checkpoint are done.
        bar = tqdm(batches[skip:], desc=f"{desc} epoch {epoch + 1}", file=sys.stderr, mininterval=5, initial=skip,
                   total=len(batches))
        for done, index in enumerate(bar, start=skip + 1):
            ids, mask = (t.to(device) for t in pad_batch([train.input_ids[i] for i in index]))
            labels = torch.from_numpy(train.labels[index]).to(device)
            with torch.autocast(device.type, dtype=low_precision or torch.float32, enabled=low_precision is not None):
                if loss_module is not None:
                    loss = loss_module(model, ids, mask, labels, index)
                elif soft is None:
                    loss = nn.functional.cross_entropy(forward(ids, mask).float(), labels)
                else:
                    loss = kd_loss(forward(ids, mask).float(), soft[index], labels, temperature, alpha)
            loss.float().backward()
            nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            scheduler.step()
            running += loss.item()
            step += 1
            faults.hit("train-step", f"{desc}:{step}")  # $TEXTCOMPRESS_FAULT=kill@train-step=teach:12
            if step_hook is not None:  # before zero_grad: movement pruning reads the gradients
                step_hook(step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{running / done:.4f}", refresh=False)
            if checkpoint is not None and step % checkpoint.every == 0 and done < len(batches):
                save_checkpoint(epoch, done, running)
        record = {"epoch": epoch + 1, "steps": step, "loss": running / max(1, len(batches))}
        if validation is not None:
            record["validation_accuracy"] = accuracy(predict_logits(model, validation, device=device), validation.labels)
            print(f"{desc}: epoch {epoch + 1} validation accuracy {record['validation_accuracy']:.4f}", file=sys.stderr)
        history.append(record)
        if checkpoint is not None and epoch + 1 < math.ceil(epochs):
            save_checkpoint(epoch + 1, 0, 0.0)
    model.eval()
    model.to("cpu")  # saving, export and the next stage expect CPU tensors
    if loss_module is not None:
        loss_module.to("cpu")
    if checkpoint is not None:
        checkpoint.clear()
    return history


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, batch_size: int = 128, desc: str | None = None,
                   device: str | torch.device | None = "cpu", precision: str = "fp32") -> np.ndarray:
    """Logits for every row of `split`, in the split's order (the model is left where it was).
    `precision` as in training: bf16 autocasts the forward pass (the logits come back fp32)."""
    model.eval()
    home = next(model.parameters()).device
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model.to(device)
    low_precision = autocast_dtype(precision, device)
    out = np.zeros((len(split), model.config.num_labels), dtype=np.float32)
    batches = length_bucketed_batches([len(x) for x in split.input_ids], batch_size, shuffle=False)
    for index in tqdm(batches, desc=desc, file=sys.stderr, disable=desc is None, mininterval=5):
        ids, mask = (t.to(device) for t in pad_batch([split.input_ids[i] for i in index]))
        with torch.autocast(device.type, dtype=low_precision or torch.float32, enabled=low_precision is not None):
            out[index] = model(ids, mask).float().cpu().numpy()
    model.to(home)
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == labels).mean())
