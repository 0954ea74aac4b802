"""Knowledge distillation: a smaller student learns from the teacher.

Students (`student:`):
- `bert`: a BERT-style encoder cut from the teacher (its embeddings, chosen layers and head), or,
  for a teacher that runs in transformers, from `student_base` (with that base's tokenizer);
  with `width` / `ffn` below the teacher's, the most important heads and FFN neurons are kept
  and the residual stream is projected onto its top principal directions, so a narrower
  student starts from a projection of the teacher instead of from scratch;
- `lstm`, `gru` (Tang et al., 2019) and `cnn` (Kim, 2014): their own word-piece embedding,
  initialised from the teacher's table (projected onto its principal directions when smaller);
- `same`: the current model, fine-tuned again (a recovery step).

The student then learns from the teacher with the recovery losses (techniques/recovery.py):
logit KD, optionally hidden-state and attention-map KD, optionally on teacher-labelled
augmented copies of the data (`augment`).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from textcompress.data import length_bucketed_batches, pad_batch
from textcompress.errors import RecipeError
from textcompress.models.encoder import TextClassifier, count_parameters
from textcompress.techniques.base import RECOVERY, Technique
from textcompress.techniques.pruning import gate_importance, remove_heads_and_neurons, student_from_teacher
from textcompress.techniques.recovery import default_layer_map, recover, with_augmented_data, word_embeddings

def pick_teacher_layers(num_teacher_layers: int, layers) -> list[int]:
    """`layers` is a count (keep the bottom N layers, which Sajjad et al. found to lose least
    when cutting a fine-tuned BERT) or an explicit list of teacher layer indices."""
    if isinstance(layers, int):
        if not 1 <= layers <= num_teacher_layers:
            raise RecipeError("distill", f"layers={layers} must be between 1 and the teacher's {num_teacher_layers}",
                              f"use layers: 1 to {num_teacher_layers}")
        return list(range(layers))
    chosen = [int(i) for i in layers]
    if not chosen or any(not 0 <= i < num_teacher_layers for i in chosen):
        raise RecipeError("distill", f"layers={chosen} must be indices of the teacher's {num_teacher_layers} layers",
                          f"list layer indices from 0 to {num_teacher_layers - 1}")
    return chosen


@torch.no_grad()
def hidden_basis(model: TextClassifier, split, width: int, batches: int = 32, seed: int = 0) -> tuple[torch.Tensor, float]:
    """(hidden, width) orthonormal columns spanning the top principal directions of the model's
    residual stream (every layer's output at real tokens, uncentred), and the share of the
    stream's energy they keep."""
    model.eval()
    d = model.config.hidden_size
    moment = torch.zeros(d, d, dtype=torch.float64)
    for index in length_bucketed_batches([len(x) for x in split.input_ids], 32, shuffle=True, seed=seed)[:batches]:
        ids, mask = pad_batch([split.input_ids[i] for i in index])
        for h in model.hidden_states(ids, mask):
            real = h[mask.bool()].double()
            moment += real.T @ real
    values, vectors = torch.linalg.eigh(moment)  # ascending eigenvalues
    return vectors[:, -width:].flip(-1).to(torch.float32), float(values[-width:].sum() / values.sum())


def project_width(model: TextClassifier, basis: torch.Tensor, energy: float = 1.0) -> TextClassifier:
    """A model whose residual stream is the original's carried in `basis` coordinates: weights
    that read it are multiplied by the basis, weights that write it by its transpose, and
    LayerNorm scales are averaged over it and rescaled by √(energy·hidden/width), since a
    LayerNorm over fewer coordinates would otherwise output a projection of the wrong length.
    Heads keep their size; their count must already fit (see narrow_student). Exact for a
    permutation of the coordinates; an initialisation otherwise."""
    config = model.config
    if config.low_rank or config.embedding_size or config.shared_layers:
        raise RecipeError("distill", "width narrows a plain encoder", "put distill before sharing and decomposition steps")
    if config.head_activation or config.embedding_width:
        raise RecipeError("distill", "width narrows an encoder with a linear head and full-width embeddings; this "
                          "teacher has a fine-tuned head's dense layer or ELECTRA's projected embeddings",
                          "drop `width` (cut layers, heads and neurons instead)")
    d, width = basis.shape
    narrow = TextClassifier(replace(config, hidden_size=width, num_heads=width // config.head_dim))
    reads = ("query.weight", "key.weight", "value.weight", "intermediate.dense.weight", "classifier.weight",
             "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight")
    state, norm_scale = {}, (energy * d / width) ** 0.5
    for key, t in model.state_dict().items():
        if key.endswith("LayerNorm.weight"):
            t = (basis * basis).T @ t * norm_scale
        elif key.endswith("LayerNorm.bias") or key.endswith("output.dense.bias"):
            t = basis.T @ t
        elif key.endswith("output.dense.weight"):
            t = basis.T @ t
        elif key.endswith(reads):
            t = t @ basis
        state[key] = t.contiguous()
    narrow.load_state_dict(state)
    return narrow


def narrow_student(student: TextClassifier, ctx, width: int, ffn: int) -> tuple[TextClassifier, torch.Tensor | None, dict]:
    """Keep the `width / head_dim` most important heads and the `ffn` most important neurons of
    every layer (gradient importance, as structured pruning scores them), then project the
    residual stream to `width`. Returns (student, basis or None, details)."""

    config, d = student.config, student.config.head_dim
    width = width or config.hidden_size
    if width % d or not d <= width <= config.hidden_size:
        raise RecipeError("distill", f"width={width} must be a multiple of the head size {d}, at most {config.hidden_size}",
                          f"use a multiple of {d} up to {config.hidden_size}")
    if ffn > max(config.layer_ffn):
        raise RecipeError("distill", f"ffn={ffn} is wider than the teacher's {max(config.layer_ffn)}",
                          f"use ffn: at most {max(config.layer_ffn)}")
    heads, neurons = gate_importance(student, ctx.train, ctx.teacher_logits, batches=32, seed=ctx.seed)
    keep_heads = [sorted(s.argsort(descending=True)[: min(len(s), width // d)].tolist()) for s in heads]
    keep_neurons = [sorted(s.argsort(descending=True)[: ffn or len(s)].tolist()) for s in neurons]
    student = remove_heads_and_neurons(student, keep_heads, keep_neurons)
    details = {"width": width, "layer_heads": student.config.layer_heads, "layer_ffn": student.config.layer_ffn}
    if width == config.hidden_size:
        return student, None, details
    basis, energy = hidden_basis(student, ctx.train, width, seed=ctx.seed)
    details["energy_kept"] = round(energy, 4)
    return project_width(student, basis, energy), basis, details


# ---------------------------------------------------------------------------
# Recurrent and convolutional students


def embedding_table(teacher: nn.Module, size: int) -> torch.Tensor:
    """The teacher's word-piece vectors (a transformer's or a recurrent model's), projected onto
    their top `size` principal directions when `size` is smaller than their width."""
    from textcompress.models.recurrent import principal_projection

    table = word_embeddings(teacher).weight.detach()
    if teacher.kind == "transformer" and teacher.embeddings.word_projection is not None:
        table = teacher.embeddings.word_projection(table).detach()
    if size > table.shape[1]:
        raise RecipeError("distill", f"embedding_size={size} is wider than the teacher's {table.shape[1]}",
                          f"use embedding_size: at most {table.shape[1]}")
    return principal_projection(table, size)


def word_level_student(teacher: nn.Module, args: dict) -> nn.Module:
    """A BiLSTM/GRU (Tang et al.) or Kim CNN on the teacher's word pieces."""
    size = args["embedding_size"] or embedding_table(teacher, 0).shape[1]
    common = {"vocab_size": teacher.config.vocab_size, "embedding_size": size, "num_labels": teacher.config.num_labels,
              "dropout": args["dropout"]}
    if args["student"] == "cnn":
        from textcompress.models.cnn import ConvClassifier, ConvConfig
        student = ConvClassifier(ConvConfig(filters=args["filters"], kernel_sizes=args["kernel_sizes"], **common))
    else:
        from textcompress.models.recurrent import RecurrentClassifier, RecurrentConfig
        if not isinstance(args["layers"], int):
            raise RecipeError("distill", f"layers={args['layers']} must be a count of recurrent layers for student "
                              f"{args['student']}", "give layers as a whole number, 1 or more")
        student = RecurrentClassifier(RecurrentConfig(
            hidden_size=args["hidden_size"], cell=args["student"], num_layers=args["layers"],
            bidirectional=args["bidirectional"], pooling=args["pooling"], head_size=args["head_size"], **common))
    student.word_embeddings.weight.data.copy_(embedding_table(teacher, size))
    return student


def student_from_base(args: dict, ctx, num_labels: int) -> TextClassifier:
    """For a teacher that runs in transformers: a BERT student of `student_base`'s first layers with
    a fresh head and the base's own tokenizer. The context takes that tokenizer and the texts
    tokenized by it, for the steps that follow and the saved bundle, as a vocabulary step does; the
    teacher's logits stay as they are, one row per sentence."""
    from textcompress.data import load_tokenizer, pair_separator, retokenized
    from textcompress.models.checkpoints import from_pretrained, resolve_base, tokenizer_file

    folder = resolve_base(args["student_base"])
    ctx.tokenizer_file = tokenizer_file(folder, ctx.workdir)
    pairs = len(ctx.train) and isinstance(ctx.train.texts[0], tuple)
    base = from_pretrained(folder, num_labels, separator=pair_separator(ctx.tokenizer_file) if pairs else None)
    student = student_from_teacher(base, pick_teacher_layers(base.config.num_layers, args["layers"]))
    tokenizer = load_tokenizer(ctx.tokenizer_file, ctx.max_length)
    ctx.train, ctx.validation = retokenized(ctx.train, tokenizer), retokenized(ctx.validation, tokenizer)
    return student


def apply_distill(model: TextClassifier, args: dict, ctx) -> tuple[nn.Module, dict]:
    """The `distill` step: a student (cut from the teacher's layers and optionally narrowed, an
    LSTM/GRU/CNN, or the current model for `same`) trained against the teacher. Returns (student, details)."""
    basis, layer_map = None, args["layer_map"] or None
    if args["student"] == "same":
        student, details = copy.deepcopy(model), {"student": "same (recovery)"}
    elif args["student"] == "bert" and model.kind == "transformers":
        student = student_from_base(args, ctx, model.config.num_labels)
        details = {"student": "bert", "student_base": args["student_base"], "layers": student.config.num_layers,
                   "tokenizer": "the student base's"}
    elif args["student"] == "bert":
        used = pick_teacher_layers(model.config.num_layers, args["layers"])
        student = student_from_teacher(model, used)
        details = {"student": "bert", "teacher_layers": used, "layers": len(used)}
        if args["width"] or args["ffn"]:
            student, basis, details["narrowed"] = narrow_student(student, ctx, args["width"], args["ffn"])
        layer_map = layer_map or used
    else:
        # Its embedding starts from the current model's word pieces (a trimmed vocabulary stays trimmed).
        student = word_level_student(model, args)
        details = {"student": args["student"], "config": dict(vars(student.config))}
    if layer_map and (len(layer_map) != student.config.num_layers or not all(0 <= j < ctx.teacher.config.num_layers for j in layer_map)):
        raise RecipeError("distill", f"layer_map {layer_map} must name a teacher layer for each of the student's "
                          f"{student.config.num_layers} layers", f"list {student.config.num_layers} teacher layer indices")
    details["params_before"] = count_parameters(model)
    details["params_after"] = count_parameters(student)
    if args["logit_loss"] != "kl":
        details["logit_loss"] = args["logit_loss"]
    if args["hidden_weight"] or args["attention_weight"]:
        details["losses"] = {"hidden_weight": args["hidden_weight"], "attention_weight": args["attention_weight"],
                             "layer_map": layer_map or default_layer_map(student.config.num_layers, ctx.teacher.config.num_layers)}
    if args["augment"]:
        rows = len(ctx.train)
        ctx = with_augmented_data(ctx, args["augment"])
        details["augmented_rows"] = len(ctx.train) - rows
    details["history"] = recover(student, ctx, args, desc="distill", layer_map=layer_map, projection_init=basis)
    return student, details


# ---------------------------------------------------------------------------
# The declaration

WORD_LEVEL_STUDENTS = ("lstm", "gru", "cnn")
BERT_STUDENT_ONLY = ("width", "ffn", "layer_map", "hidden_weight", "attention_weight")


def _check(given: dict, kind: str):
    student = given.get("student", "bert")
    if "student_base" in given and not (kind == "transformers" and student == "bert"):
        return ("student_base is where a bert student of a teacher that runs in transformers comes from; here the "
                "student is cut from the current model", "remove student_base")
    if kind == "transformers":  # the teacher runs in transformers: its layers cannot be cut or compared
        if student == "same":
            return ("student: same fine-tunes the current model, and this one runs in transformers as it is",
                    "use student: bert (cut from `student_base`), lstm, gru or cnn")
        needs_layers = [k for k in BERT_STUDENT_ONLY if given.get(k)]
        if needs_layers:
            return (f"{needs_layers[0]} needs the teacher's layers, and this teacher runs in transformers (not converted)",
                    f"remove {needs_layers[0]}: the student learns the teacher's logits")
        if student == "bert" and given.get("augment"):
            return ("augment labels new token sequences of the teacher's tokenizer, and a bert student reads "
                    "`student_base`'s", "remove augment, or use student: lstm, gru or cnn (the teacher's tokenizer)")
        return None
    if kind != "transformer" and student == "bert":
        return f"a bert student is cut from a transformer's layers, and this model is {kind}", "use student: lstm, gru, cnn or same"
    if student in WORD_LEVEL_STUDENTS:
        misplaced = [k for k in BERT_STUDENT_ONLY if given.get(k)]
        if misplaced:
            return f"{misplaced[0]} applies to bert students, not {student}", f"remove {misplaced[0]}"
    return None


def _student_kind(args, kind: str) -> str:
    students = {"lstm": "recurrent", "gru": "recurrent", "cnn": "cnn", "bert": "transformer"}
    return students.get(args["student"], kind)


TECHNIQUES = (
    Technique(
        "distill", "distillation",
        # student: bert (teacher layers `layers`, narrowed to `width` / `ffn` when set), lstm, gru,
        # cnn (own embedding of `embedding_size`, 0: the teacher's width), or same (recovery).
        # layers: teacher layers for bert (a count or indices), recurrent layers for lstm/gru.
        # augment: copies of the training set augmented and labelled by the teacher (0: off;
        # at most 4, about ten minutes of teacher labelling on 2 CPU cores for SST-2).
        # student_base: where a bert student comes from when the current model runs in transformers
        # (its first `layers` layers, its own tokenizer); students of any other model are cut from that model.
        defaults={"student": "bert", "student_base": "minilm-l6", "layers": 2, "layer_map": [], "augment": 0,
                  "width": 0, "ffn": 0,
                  "embedding_size": 0, "hidden_size": 300, "bidirectional": True, "pooling": "max", "head_size": 0,
                  "filters": 100, "kernel_sizes": [3, 4, 5], "dropout": 0.1,
                  **RECOVERY, "epochs": 3.0, "freeze_embeddings": False},
        choices={"student": ("bert", "same", *WORD_LEVEL_STUDENTS), "pooling": ("max", "mean", "last")},
        bounds={"layers": (1, None), "augment": (0, 4), "width": (0, None), "ffn": (0, None), "embedding_size": (0, None),
                "hidden_size": (1, None), "head_size": (0, None), "filters": (1, None), "dropout": (0, 0.9)},
        models=("transformer", "transformers", "recurrent", "cnn"), check=_check, apply=apply_distill, produces=_student_kind,
        counts=lambda args: args["student"] != "same",
    ),
)
