"""Knowledge distillation: a smaller student learns the teacher's soft labels.

Students are BERT-style encoders cut from the teacher (its embeddings, chosen layers and
head), trained on cached teacher logits mixed with the hard labels (Hinton et al.). With
`student: same` the step is a recovery step: the current (already compressed) model is
fine-tuned against the teacher, which is how other families win back accuracy.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from textcompress.modeling import TextClassifier, count_parameters
from textcompress.training import train_classifier


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


def recover(model: TextClassifier, ctx, args: dict, desc: str, step_hook=None) -> list[dict]:
    """Fine-tune a modified model against the teacher's cached logits, in place: the recovery step
    that pruning, sharing, decomposition and linear attention call after changing the model.
    `freeze_embeddings` keeps the word-piece table fixed: it is most of a small model's
    parameters, the teacher already tuned it, and its optimiser update dominates a step on CPU."""
    if args["epochs"] <= 0:
        return []
    frozen = [model.embeddings.word_embeddings.weight] if args.get("freeze_embeddings") else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        return train_classifier(
            model.train(), ctx.train, epochs=args["epochs"], lr=args["lr"], batch_size=args["batch_size"],
            warmup=args["warmup"], seed=ctx.seed, teacher_logits=ctx.teacher_logits, temperature=args["temperature"],
            alpha=args["alpha"], validation=ctx.validation, desc=desc, step_hook=step_hook, device=ctx.device)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def apply_distill(model: TextClassifier, args: dict, ctx) -> tuple[TextClassifier, dict]:
    if args["student"] == "same":
        student, details = copy.deepcopy(model), {"student": "same (recovery)"}
    else:
        used = pick_teacher_layers(model.config.num_layers, args["layers"])
        student = student_from_teacher(model, used)
        details = {"student": "bert", "teacher_layers": used, "layers": len(used)}
    details["params_before"] = count_parameters(model)
    details["params_after"] = count_parameters(student)
    details["history"] = recover(student, ctx, args, desc="distill")
    return student, details
