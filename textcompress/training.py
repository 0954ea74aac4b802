"""Fine-tuning and inference loops shared by `teach` and every recovery step.

One loop covers plain fine-tuning (hard labels) and logit distillation (soft labels
from cached teacher logits, mixed with the hard labels), so every family trains the
same way: AdamW, linear warm-up then linear decay, length-bucketed batches, seeded.
"""

from __future__ import annotations

import math
import random
import sys

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from textcompress.data import Split, length_bucketed_batches, pad_batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
) -> list[dict]:
    """Train in place. With `teacher_logits` (rows aligned with `train`) the loss is KD; else CE.
    Returns one record per epoch (loss, and validation accuracy when given)."""
    seed_everything(seed)
    lengths = [len(x) for x in train.input_ids]
    batches_per_epoch = math.ceil(len(train) / batch_size)
    total_steps = max(1, math.ceil(epochs * batches_per_epoch))
    warmup_steps = int(warmup * total_steps)
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / max(1, warmup_steps), max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))))
    soft = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32)) if teacher_logits is not None else None

    history, step = [], 0
    for epoch in range(math.ceil(epochs)):
        model.train()
        batches = length_bucketed_batches(lengths, batch_size, shuffle=True, seed=seed + epoch)
        batches = batches[: total_steps - step]
        running, bar = 0.0, tqdm(batches, desc=f"{desc} epoch {epoch + 1}", file=sys.stderr, mininterval=5)
        for done, index in enumerate(bar, start=1):
            ids, mask = pad_batch([train.input_ids[i] for i in index])
            labels = torch.from_numpy(train.labels[index])
            logits = model(ids, mask)
            if soft is None:
                loss = nn.functional.cross_entropy(logits, labels)
            else:
                loss = kd_loss(logits, soft[index], labels, temperature, alpha)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item()
            step += 1
            bar.set_postfix(loss=f"{running / done:.4f}", refresh=False)
        record = {"epoch": epoch + 1, "steps": step, "loss": running / max(1, len(batches))}
        if validation is not None:
            record["validation_accuracy"] = accuracy(predict_logits(model, validation), validation.labels)
            print(f"{desc}: epoch {epoch + 1} validation accuracy {record['validation_accuracy']:.4f}", file=sys.stderr)
        history.append(record)
    model.eval()
    return history


@torch.inference_mode()
def predict_logits(model: nn.Module, split: Split, batch_size: int = 128, desc: str | None = None) -> np.ndarray:
    """Logits for every row of `split`, in the split's order."""
    model.eval()
    out = np.zeros((len(split), model.config.num_labels), dtype=np.float32)
    batches = length_bucketed_batches([len(x) for x in split.input_ids], batch_size, shuffle=False)
    for index in tqdm(batches, desc=desc, file=sys.stderr, disable=desc is None, mininterval=5):
        ids, mask = pad_batch([split.input_ids[i] for i in index])
        out[index] = model(ids, mask).float().numpy()
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == labels).mean())
