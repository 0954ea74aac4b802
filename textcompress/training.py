"""Fine-tuning and inference loops shared by `teach` and every recovery step.

One loop covers plain fine-tuning (hard labels) and logit distillation (soft labels
from cached teacher logits, mixed with the hard labels), so every family trains the
same way: AdamW, linear warm-up then linear decay, length-bucketed batches, seeded.
Richer objectives (hidden-state and attention distillation, in `textcompress.distill`)
plug in as a `loss_module`; schedules that act between steps (gradual pruning, random
feature redraws) plug in as a `step_hook`, so this loop, which the teacher depends on,
stays put while the families grow.
"""

from __future__ import annotations

import math
import random
import sys
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from textcompress.data import Split, length_bucketed_batches, pad_batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def kd_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> torch.Tensor:
    """alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE(student, labels) (Hinton et al.)."""
    soft = nn.functional.kl_div(
        nn.functional.log_softmax(student_logits / temperature, dim=-1),
        nn.functional.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean", log_target=True,
    ) * temperature**2
    hard = nn.functional.cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


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
) -> list[dict]:
    """Train in place. With `teacher_logits` (rows aligned with `train`) the loss is KD; else CE.
    `loss_module(model, ids, mask, labels, index)` replaces both (its own parameters, such as
    projections, are trained too); `step_hook(step, total_steps)` runs after every update, gradients still in place.
    Returns one record per epoch (loss, and validation accuracy when given)."""
    seed_everything(seed)
    device = resolve_device(device)
    model.to(device)
    if loss_module is not None:
        loss_module.to(device)
    lengths = [len(x) for x in train.input_ids]
    batches_per_epoch = math.ceil(len(train) / batch_size)
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

    history, step = [], 0
    for epoch in range(math.ceil(epochs)):
        model.train()
        batches = length_bucketed_batches(lengths, batch_size, shuffle=True, seed=seed + epoch)
        batches = batches[: total_steps - step]
        running, bar = 0.0, tqdm(batches, desc=f"{desc} epoch {epoch + 1}", file=sys.stderr, mininterval=5)
        for done, index in enumerate(bar, start=1):
            ids, mask = (t.to(device) for t in pad_batch([train.input_ids[i] for i in index]))
            labels = torch.from_numpy(train.labels[index]).to(device)
            if loss_module is not None:
                loss = loss_module(model, ids, mask, labels, index)
            elif soft is None:
                loss = nn.functional.cross_entropy(model(ids, mask), labels)
            else:
                loss = kd_loss(model(ids, mask), soft[index], labels, temperature, alpha)
            loss.backward()
            nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            scheduler.step()
            running += loss.item()
            step += 1
            if step_hook is not None:  # before zero_grad: movement pruning reads the gradients
                step_hook(step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{running / done:.4f}", refresh=False)
        record = {"epoch": epoch + 1, "steps": step, "loss": running / max(1, len(batches))}
        if validation is not None:
            record["validation_accuracy"] = accuracy(predict_logits(model, validation, device=device), validation.labels)
            print(f"{desc}: epoch {epoch + 1} validation accuracy {record['validation_accuracy']:.4f}", file=sys.stderr)
        history.append(record)
    model.eval()
    model.to("cpu")  # saving, export and the next stage expect CPU tensors
    if loss_module is not None:
        loss_module.to("cpu")
    return history


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, batch_size: int = 128, desc: str | None = None,
                   device: str | torch.device | None = "cpu") -> np.ndarray:
    """Logits for every row of `split`, in the split's order (the model is left where it was)."""
    model.eval()
    home = next(model.parameters()).device
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    model.to(device)
    out = np.zeros((len(split), model.config.num_labels), dtype=np.float32)
    batches = length_bucketed_batches([len(x) for x in split.input_ids], batch_size, shuffle=False)
    for index in tqdm(batches, desc=desc, file=sys.stderr, disable=desc is None, mininterval=5):
        ids, mask = (t.to(device) for t in pad_batch([split.input_ids[i] for i in index]))
        out[index] = model(ids, mask).float().cpu().numpy()
    model.to(home)
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == labels).mean())
