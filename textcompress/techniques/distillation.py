"""Knowledge distillation: a smaller student learns from the teacher.

Students are BERT-style encoders cut from the teacher (its embeddings, chosen layers and
head). The loss mixes soft labels from the cached teacher logits with the hard labels
(Hinton et al.) and, with `hidden_weight` / `attention_weight`, adds hidden-state MSE through
a learned projection where widths differ and attention-map KL (TinyBERT, MiniLM), each student
layer learning from the teacher layer `layer_map` names; the teacher then runs on the fly for
those terms. With `student: same` the step is a recovery step; `recover` is what every other
family calls to fine-tune a modified model against the teacher with the same losses.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from textcompress.modeling import TextClassifier, count_parameters
from textcompress.training import kd_loss, train_classifier


def default_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer i learns from teacher layer ⌈(i+1)·T/S⌉ − 1: evenly spread, last to last."""
    return [max(0, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


class DistillationLoss(nn.Module):
    """Logit KD on cached teacher logits, plus hidden-state MSE and attention-map KL against the
    teacher run on the fly for the mapped layers. Its projections are trained with the student."""

    def __init__(self, teacher: TextClassifier, teacher_logits: np.ndarray, student_hidden: int, layer_map: list[int],
                 temperature: float, alpha: float, hidden_weight: float, attention_weight: float):
        super().__init__()
        object.__setattr__(self, "teacher", teacher)  # not a submodule: its weights must not train
        self.soft = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
        self.layer_map, self.temperature, self.alpha = layer_map, temperature, alpha
        self.hidden_weight, self.attention_weight = hidden_weight, attention_weight
        width = teacher.config.hidden_size
        self.projections = nn.ModuleList(
            nn.Linear(student_hidden, width, bias=False) if student_hidden != width else nn.Identity() for _ in layer_map)

    def forward(self, model, ids, mask, labels, index):
        maps = self.attention_weight > 0
        logits, hidden, attention = model.forward_with_hidden(ids, mask, attentions=maps)
        loss = kd_loss(logits, self.soft[index].to(logits.device), labels, self.temperature, self.alpha)
        if not (self.hidden_weight or self.attention_weight):
            return loss
        if next(self.teacher.parameters()).device != ids.device:
            self.teacher.to(ids.device)
        self.teacher.eval()
        with torch.no_grad():
            _, teacher_hidden, teacher_attention = self.teacher.forward_with_hidden(ids, mask, attentions=maps)
        real = mask.to(logits.dtype)[..., None]  # padding positions are not compared
        for i, j in enumerate(self.layer_map):
            if self.hidden_weight:
                diff = self.projections[i](hidden[i + 1]) - teacher_hidden[j + 1]
                loss = loss + self.hidden_weight * (diff.pow(2) * real).sum() / (real.sum() * diff.shape[-1])
            if maps and attention[i].shape == teacher_attention[j].shape:
                t, s = teacher_attention[j], attention[i].clamp(min=1e-9)
                rows = real[:, None, :, :]  # (batch, 1, query, 1)
                kl = (t * (t.clamp(min=1e-9).log() - s.log())).sum(-1, keepdim=True)
                loss = loss + self.attention_weight * (kl * rows).sum() / (rows.sum() * t.shape[1])
        return loss


def pick_teacher_layers(num_teacher_layers: int, layers) -> list[int]:
    """`layers` is a count (keep the bottom N layers, which Sajjad et al. found to lose least
    when cutting a fine-tuned BERT) or an explicit list of teacher layer indices."""
    if isinstance(layers, int):
        if not 1 <= layers <= num_teacher_layers:
            raise ValueError(f"distill: layers={layers} must be between 1 and the teacher's {num_teacher_layers}")
        return list(range(layers))
    chosen = [int(i) for i in layers]
    if not chosen or any(not 0 <= i < num_teacher_layers for i in chosen):
        raise ValueError(f"distill: layers={chosen} must be indices of the teacher's {num_teacher_layers} layers")
    return chosen


def student_from_teacher(teacher: TextClassifier, teacher_layers: list[int]) -> TextClassifier:
    """A shallower copy of the teacher: same embeddings and head, the chosen layers in order.
    Before training it computes exactly what those teacher layers compute."""
    config = replace(teacher.config, num_layers=len(teacher_layers),
                     layer_heads=[teacher.config.layer_heads[i] for i in teacher_layers],
                     layer_ffn=[teacher.config.layer_ffn[i] for i in teacher_layers])
    student = TextClassifier(config)
    student.embeddings.load_state_dict(teacher.embeddings.state_dict())
    student.classifier.load_state_dict(teacher.classifier.state_dict())
    for target, source in zip(student.encoder.layer, teacher_layers):
        target.load_state_dict(teacher.encoder.layer[source].state_dict())
    return student


def recover(model: TextClassifier, ctx, args: dict, desc: str, step_hook=None, layer_map: list[int] | None = None) -> list[dict]:
    """Fine-tune a modified model against the teacher's cached logits, in place: the recovery step
    that pruning, sharing, decomposition and linear attention call after changing the model.
    `freeze_embeddings` keeps the word-piece table fixed: it is most of a small model's
    parameters, the teacher already tuned it, and its optimiser update dominates a step on CPU."""
    if args["epochs"] <= 0:
        return []
    loss_module = None
    if args.get("hidden_weight") or args.get("attention_weight"):
        if args.get("attention_weight") and model.config.attention != "softmax":
            raise ValueError("attention-map distillation needs softmax attention in the student; set attention_weight: 0")
        layer_map = layer_map or default_layer_map(model.config.num_layers, ctx.teacher.config.num_layers)
        loss_module = DistillationLoss(ctx.teacher, ctx.teacher_logits, model.config.hidden_size, layer_map,
                                       args["temperature"], args["alpha"], args.get("hidden_weight", 0.0),
                                       args.get("attention_weight", 0.0))
    frozen = [model.embeddings.word_embeddings.weight] if args.get("freeze_embeddings") else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        return train_classifier(
            model.train(), ctx.train, epochs=args["epochs"], lr=args["lr"], batch_size=args["batch_size"],
            warmup=args["warmup"], seed=ctx.seed, teacher_logits=ctx.teacher_logits, temperature=args["temperature"],
            alpha=args["alpha"], validation=ctx.validation, desc=desc, step_hook=step_hook, device=ctx.device,
            loss_module=loss_module)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        ctx.teacher.to("cpu")


def with_augmented_data(ctx, multiplier: int):
    """A context whose training set adds `multiplier` augmented copies labelled by the teacher."""
    import dataclasses
    import json
    from pathlib import Path

    from textcompress.data import Split
    from textcompress.techniques.augmentation import augmented_split
    from textcompress.training import predict_logits

    vocab = json.loads(Path(ctx.tokenizer_file).read_text())["model"]["vocab"]
    extra = augmented_split(ctx.train, multiplier, vocab.get("[MASK]", vocab.get("[UNK]", 0)), ctx.seed)
    logits = predict_logits(ctx.teacher, extra, device=ctx.device, desc="teacher labels for augmented data")
    train = Split(ctx.train.texts + extra.texts, ctx.train.input_ids + extra.input_ids,
                  np.concatenate([ctx.train.labels, logits.argmax(-1)]))
    return dataclasses.replace(ctx, train=train, teacher_logits=np.concatenate([ctx.teacher_logits, logits]))


def apply_distill(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    if args["student"] == "same":
        student, details = copy.deepcopy(model), {"student": "same (recovery)"}
    else:
        used = pick_teacher_layers(model.config.num_layers, args["layers"])
        student = student_from_teacher(model, used)
        details = {"student": "bert", "teacher_layers": used, "layers": len(used)}
    layer_map = args["layer_map"] or (details.get("teacher_layers") if student.config.num_layers == len(details.get("teacher_layers", [])) else None)
    if layer_map and (len(layer_map) != student.config.num_layers or not all(0 <= j < ctx.teacher.config.num_layers for j in layer_map)):
        raise ValueError(f"distill: layer_map {layer_map} must name a teacher layer for each of the student's "
                         f"{student.config.num_layers} layers")
    details["params_before"] = count_parameters(model)
    details["params_after"] = count_parameters(student)
    if args["hidden_weight"] or args["attention_weight"]:
        details["losses"] = {"hidden_weight": args["hidden_weight"], "attention_weight": args["attention_weight"],
                             "layer_map": layer_map or default_layer_map(student.config.num_layers, ctx.teacher.config.num_layers)}
    if args["augment"]:
        rows = len(ctx.train)
        ctx = with_augmented_data(ctx, args["augment"])
        details["augmented_rows"] = len(ctx.train) - rows
    details["history"] = recover(student, ctx, args, desc="distill", layer_map=layer_map)
    return student, details
