"""The technique registry: recipe step name -> what it does, which family it belongs to, and
when it runs (on the PyTorch model in `compress`, or on the ONNX graph in `export`).

A candidate's recipe is an ordered list of one-key mappings, e.g.
    [{distill: {student: bert, layers: 2}}, {quantize: {mode: dynamic}}]
Each PyTorch-level family lives in its own module here and registers its steps below; the
ONNX-level one (quantization) lives in textcompress/quantization.py, so that changing it
does not invalidate the trained candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

FAMILIES = ("pruning", "quantization", "distillation", "parameter_sharing", "tensor_decomposition", "linear_attention")


@dataclass(frozen=True)
class Technique:
    name: str
    family: str
    stage: str  # "compress": PyTorch model -> model; "export": ONNX file -> ONNX file
    defaults: dict
    module: str  # where `apply` lives, imported on use so that params validation stays light
    choices: dict | None = None  # allowed values per argument, where the set is closed
    bounds: dict | None = None  # (low, high) per numeric argument, inclusive; None for no limit

    def apply_fn(self) -> Callable:
        import importlib

        return getattr(importlib.import_module(self.module), f"apply_{self.name}")


# Every step that modifies the model then fine-tunes it against the teacher takes these
# (see techniques.distillation.recover); kept here so params validation imports no torch.
# logit_loss: kl (soft labels at `temperature`) or mse (on logits, Tang et al.); teacher_states:
# where hidden-state targets come from: auto (cached in fp16 below a size limit), cache, live.
RECOVERY = {"epochs": 1.0, "lr": 1.0e-4, "batch_size": 32, "warmup": 0.06, "temperature": 2.0, "alpha": 0.9,
            "freeze_embeddings": True, "hidden_weight": 0.0, "attention_weight": 0.0, "logit_loss": "kl",
            "teacher_states": "auto"}
RECOVERY_CHOICES = {"logit_loss": ("kl", "mse"), "teacher_states": ("auto", "cache", "live")}
SCOPES = ("global", "layer")
COMMON_BOUNDS = {"hidden_weight": (0, None), "attention_weight": (0, None), "epochs": (0, None), "lr": (0, 1), "batch_size": (1, None), "warmup": (0, 1), "temperature": (1e-3, None),
                 "alpha": (0, 1), "importance_batches": (1, None), "round_to": (1, None), "frequency": (1, None)}
FRACTION_BELOW_ONE = (0, 0.99)

TECHNIQUES: dict[str, Technique] = {
    "distill": Technique(
        "distill", "distillation", "compress",
        # student: bert (teacher layers `layers`, narrowed to `width` / `ffn` when set), lstm, gru,
        # cnn (own embedding of `embedding_size`, 0: the teacher's width), or same (recovery).
        # layers: teacher layers for bert (a count or indices), recurrent layers for lstm/gru.
        # augment: copies of the training set augmented and labelled by the teacher (0: off;
        # at most 4, about ten minutes of teacher labelling on 2 CPU cores for SST-2).
        defaults={"student": "bert", "layers": 2, "layer_map": [], "augment": 0, "width": 0, "ffn": 0,
                  "embedding_size": 0, "hidden_size": 300, "bidirectional": True, "pooling": "max", "head_size": 0,
                  "filters": 100, "kernel_sizes": [3, 4, 5], "dropout": 0.1,
                  **RECOVERY, "epochs": 3.0, "freeze_embeddings": False},
        module="textcompress.techniques.distillation",
        choices={"student": ("bert", "same", "lstm", "gru", "cnn"), "pooling": ("max", "mean", "last")},
        bounds={"layers": (1, None), "augment": (0, 4), "width": (0, None), "ffn": (0, None), "embedding_size": (0, None),
                "hidden_size": (1, None), "head_size": (0, None), "filters": (1, None), "dropout": (0, 0.9)},
    ),
    "prune_structured": Technique(
        "prune_structured", "pruning", "compress",
        # heads, ffn: fractions removed from a transformer; units: from every direction of an LSTM/GRU.
        defaults={"heads": 0.5, "ffn": 0.5, "units": 0.0, "scope": "global", "round_to": 16, "importance_batches": 64,
                  **RECOVERY},
        module="textcompress.techniques.pruning",
        choices={"scope": SCOPES},
        bounds={"heads": FRACTION_BELOW_ONE, "ffn": FRACTION_BELOW_ONE, "units": FRACTION_BELOW_ONE},
    ),
    "drop_layers": Technique(
        "drop_layers", "pruning", "compress",
        defaults={"keep": 3, "strategy": "top", "importance_batches": 16, **RECOVERY},
        module="textcompress.techniques.pruning",
        choices={"strategy": ("top", "bottom", "alternate", "importance")},
        bounds={"keep": (1, None)},
    ),
    "prune_magnitude": Technique(
        "prune_magnitude", "pruning", "compress",
        defaults={"sparsity": 0.8, "scope": "global", "schedule": "cubic", "frequency": 50, **RECOVERY},
        module="textcompress.techniques.pruning",
        choices={"scope": SCOPES, "schedule": ("cubic", "oneshot")},
        bounds={"sparsity": FRACTION_BELOW_ONE},
    ),
    "prune_movement": Technique(
        "prune_movement", "pruning", "compress",
        # block: [rows, cols] scored and masked together ([1, 1]: single weights); emptied heads
        # and FFN neurons are then cut out.
        defaults={"sparsity": 0.8, "scope": "global", "frequency": 50, "block": [1, 1], **RECOVERY},
        module="textcompress.techniques.pruning",
        choices={"scope": SCOPES},
        bounds={"sparsity": FRACTION_BELOW_ONE},
    ),
    "trim_vocab": Technique(
        "trim_vocab", "pruning", "compress",
        defaults={"min_count": 1, "floor": 0},
        module="textcompress.techniques.vocabulary",
        bounds={"min_count": (1, None), "floor": (0, None)},
    ),
    "share_layers": Technique(
        "share_layers", "parameter_sharing", "compress",
        # delta_rank > 0: relaxed sharing, a per-layer rank-r correction to each shared weight, fitted
        # to the weights or to each layer's inputs on `calibration` training sentences (fit).
        defaults={"groups": 1, "share": "all", "init": "average", "delta_rank": 0, "fit": "weights", "calibration": 512,
                  **RECOVERY},
        module="textcompress.techniques.sharing",
        # share: directions ties a BiLSTM/GRU's backward direction to its forward one.
        choices={"share": ("all", "attention", "ffn", "directions"), "init": ("average", "first"),
                 "fit": ("weights", "activations")},
        bounds={"groups": (1, None), "delta_rank": (0, None), "calibration": (1, None)},
    ),
    "factorize_embedding": Technique(
        "factorize_embedding", "tensor_decomposition", "compress",
        # fit: weights (plain SVD of the table) or frequency (rows weighted by training use).
        defaults={"size": 128, "fit": "weights", **RECOVERY},
        module="textcompress.techniques.decomposition",
        choices={"fit": ("weights", "frequency")},
        bounds={"size": (1, None)},
    ),
    "low_rank": Technique(
        "low_rank", "tensor_decomposition", "compress",
        # fit: weights (plain SVD) or activations (fit each layer's outputs on `calibration` training sentences).
        defaults={"modules": "ffn", "rank": 0, "ratio": 0.0, "energy": 0.0, "fit": "weights", "calibration": 512,
                  **RECOVERY},
        module="textcompress.techniques.decomposition",
        # modules: ffn, attention, all (transformers); input (W_ih), hidden (W_hh), recurrent (both) for LSTM/GRU
        choices={"modules": ("ffn", "attention", "all", "input", "hidden", "recurrent"), "fit": ("weights", "activations")},
        bounds={"rank": (0, None), "ratio": (0, 1), "energy": (0, 1), "calibration": (1, None)},
    ),
    "attention": Technique(
        "attention", "linear_attention", "compress",
        # transfer_steps / transfer_lr: hedgehog's attention transfer, its feature maps alone trained
        # to reproduce softmax attention's weights before the recovery fine-tune.
        defaults={"kind": "linear", "features": 64, "length": 64, "redraw": 100, "transfer_steps": 300,
                  "transfer_lr": 1.0e-2, **RECOVERY},
        module="textcompress.techniques.linear_attention",
        choices={"kind": ("linear", "hedgehog", "performer", "linformer")},
        bounds={"features": (1, None), "length": (1, None), "redraw": (0, None), "transfer_steps": (0, None),
                "transfer_lr": (0, 1)},
    ),
    "qat": Technique(
        "qat", "quantization", "compress",
        # Fine-tunes the model fake-quantized to int8 (activation ranges calibrated on `calibration`
        # training sentences) with distillation; `export` then writes it as int8. Last in a recipe.
        defaults={"calibration": 256, **RECOVERY, "epochs": 0.5, "lr": 2.0e-5},
        module="textcompress.techniques.quantization_aware",
        bounds={"calibration": (1, None)},
    ),
    "quantize": Technique(
        "quantize", "quantization", "export",
        # dynamic: int8 weights, activations scaled per batch; static: int8 QDQ calibrated on
        # `calibration` training sentences with `method`; fp16: half-precision weights (for GPUs).
        # `exclude`: operator types or node-name fragments kept in fp32 (e.g. LayerNormalization,
        # Softmax, classifier); `sensitivity` > 0 adds the N MatMuls whose quantization alone
        # moves the logits most. `reduce_range`: 7-bit weights (for CPUs without VNNI).
        defaults={"mode": "dynamic", "per_channel": False, "calibration": 256, "method": "minmax",
                  "exclude": [], "sensitivity": 0, "reduce_range": False},
        module="textcompress.quantization",
        choices={"mode": ("dynamic", "static", "fp16"), "method": ("minmax", "entropy", "percentile")},
        bounds={"calibration": (1, None), "sensitivity": (0, None)},
    ),
}


WORD_LEVEL_STUDENTS = ("lstm", "gru", "cnn")
BERT_STUDENT_ONLY = ("width", "ffn", "layer_map", "hidden_weight", "attention_weight")
# The model kinds a recipe passes through: the teacher's (teach.architecture), then each
# distillation student's. What a step may do to each kind is checked when params load.
ARCHITECTURES = {"transformer": "transformer", "lstm": "recurrent", "gru": "recurrent"}
STEPS_FOR = {"recurrent": ("distill", "prune_structured", "drop_layers", "prune_magnitude", "trim_vocab", "low_rank",
                           "share_layers", "quantize"),
             "cnn": ("distill", "trim_vocab", "quantize")}
RECURRENT_MODULES = ("input", "hidden", "recurrent")


def parse_step(step) -> tuple[Technique, dict]:
    """One recipe step -> (technique, arguments with defaults filled in)."""
    (name, args), = step.items()
    technique = TECHNIQUES[name]
    return technique, {**technique.defaults, **(args or {})}


def validate_recipe(recipe, error: Callable[[str, str], Exception], architecture: str = "transformer") -> None:
    """Raise `error(problem, fix)` for the first thing wrong with a recipe, whose teacher has
    `architecture` (teach.architecture: transformer, lstm or gru)."""
    if not isinstance(recipe, list):
        raise error(f"must be a list of steps, got {type(recipe).__name__}", "write `[]` or `[{technique: {...}}, ...]`")
    seen_export_step = False
    kind, origin = ARCHITECTURES[architecture], f"the teacher is {'an' if architecture == 'lstm' else 'a'} {architecture}"
    for position, step in enumerate(recipe, start=1):
        if not isinstance(step, dict) or len(step) != 1:
            raise error(f"step {position} must be a mapping with one technique", "write e.g. `{quantize: {mode: dynamic}}`")
        (name, args), = step.items()
        if name not in TECHNIQUES:
            raise error(f"step {position}: unknown technique {name!r}", f"use one of {sorted(TECHNIQUES)}")
        if args is not None and not isinstance(args, dict):
            raise error(f"step {position} ({name}): arguments must be a mapping", f"write `{{{name}: {{...}}}}`")
        technique = TECHNIQUES[name]
        for key, value in (args or {}).items():
            if key not in technique.defaults:
                raise error(f"step {position} ({name}): unknown argument {key!r}", f"use one of {sorted(technique.defaults)}")
            allowed = {**RECOVERY_CHOICES, **(technique.choices or {})}.get(key)
            if allowed and value not in allowed:
                raise error(f"step {position} ({name}): {key}={value!r} is not supported", f"use one of {list(allowed)}")
            if not _same_kind(value, technique.defaults[key]):
                raise error(f"step {position} ({name}): {key}={value!r} should be like {technique.defaults[key]!r}",
                            f"give {key} a {type(technique.defaults[key]).__name__} value")
            low, high = {**COMMON_BOUNDS, **(technique.bounds or {})}.get(key, (None, None))
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    (low is not None and value < low) or (high is not None and value > high)):
                raise error(f"step {position} ({name}): {key}={value!r} is out of range",
                            f"use a value from {low} to {high if high is not None else 'any'}")
        block = (args or {}).get("block")
        if name == "prune_movement" and block is not None and not (
                len(block) == 2 and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
            raise error(f"step {position} (prune_movement): block={block!r} must be two whole numbers ≥ 1",
                        "e.g. `block: [32, 32]`, or [1, 1] for single weights")
        if name == "low_rank" and sum(bool((args or {}).get(k)) for k in ("rank", "ratio", "energy")) != 1:
            raise error(f"step {position} (low_rank): give exactly one of rank, ratio or energy",
                        "e.g. `{low_rank: {modules: ffn, energy: 0.9}}`")
        problem = _architecture_problem(name, args or {}, kind)
        if problem:
            where = f"step {position} ({name})"
            if problem[0] == "kind":
                raise error(f"{where} works on transformer models, but {origin}",
                            f"on {'an LSTM/GRU' if kind == 'recurrent' else 'a CNN'} model use "
                            f"{', '.join(STEPS_FOR[kind])} (e.g. `distill: {{student: same}}`)")
            raise error(f"{where}: {problem[0]}", problem[1])
        student = (args or {}).get("student", technique.defaults.get("student")) if name == "distill" else None
        if student in WORD_LEVEL_STUDENTS:
            misplaced = [k for k in BERT_STUDENT_ONLY if (args or {}).get(k)]
            if misplaced:
                raise error(f"step {position} (distill): {misplaced[0]} applies to bert students, not {student}",
                            f"remove {misplaced[0]}")
            kind, origin = ("cnn" if student == "cnn" else "recurrent"), f"step {position} made a {student} student"
        if position > 1 and next(iter(recipe[position - 2])) == "qat":
            raise error(f"step {position} ({name}) follows qat, which must come last",
                        "qat's model is exported as int8 by itself: put qat last and drop later steps")
        if technique.stage == "export":
            seen_export_step = True
        elif seen_export_step:
            raise error(f"step {position} ({name}) changes the PyTorch model after an ONNX-level step",
                        "put ONNX-level steps such as quantize last")


def _architecture_problem(name: str, args: dict, kind: str) -> tuple[str, str] | None:
    """Why step `name` with `args` cannot apply to a `kind` model, as (problem, fix); ("kind", "")
    when the technique has no form for that kind at all; None when it applies."""
    if kind == "transformer":
        if args.get("units"):
            return "units applies to LSTM/GRU models", "prune a transformer with heads and ffn"
        if name == "low_rank" and args.get("modules") in RECURRENT_MODULES:
            return f"modules: {args['modules']} applies to LSTM/GRU models", "use ffn, attention or all"
        if name == "share_layers" and args.get("share") == "directions":
            return "share: directions applies to bidirectional LSTM/GRU models", "use all, attention or ffn"
        return None
    if name not in STEPS_FOR[kind]:
        return "kind", ""
    if name == "distill" and args.get("student", "bert") == "bert":
        return f"a bert student is cut from a transformer's layers, and this model is {kind}", "use student: lstm, gru, cnn or same"
    layer_losses = [k for k in ("hidden_weight", "attention_weight") if args.get(k)]
    if layer_losses:
        return f"{layer_losses[0]} compares transformer layers, and this model is {kind}", f"set {layer_losses[0]}: 0"
    if kind == "cnn":
        return None
    if name == "prune_structured":
        if args.get("heads") is not None or args.get("ffn") is not None:
            return "heads and ffn apply to transformers", "prune an LSTM/GRU's hidden units with units: 0.5"
        if not args.get("units"):
            return "an LSTM/GRU is pruned by hidden units", "set units, the fraction to remove (e.g. 0.5)"
    if name == "low_rank" and args.get("modules", "ffn") not in RECURRENT_MODULES:
        return f"modules: {args.get('modules', 'ffn')} names transformer layers", "use input (W_ih), hidden (W_hh) or recurrent (both)"
    if name == "share_layers" and (args.get("share", "directions") != "directions" or "groups" in args or args.get("delta_rank")):
        return "an LSTM/GRU shares weights between its two directions", "write `share_layers: {share: directions}`"
    if name == "drop_layers" and args.get("strategy", "top") != "top":
        return "an LSTM/GRU keeps its first layers (the first reads the embedding)", "use strategy: top"
    return None


def _same_kind(value, default) -> bool:
    """An argument must have its default's type; ints pass for floats; `layers` may be a list of indices."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) == isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int) or (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    return isinstance(value, type(default))


def recipe_families(recipe: list) -> list[str]:
    """The families a recipe uses, in order; a distillation that only recovers another step
    (`student: same`) does not count."""
    families = []
    for step in recipe:
        technique, args = parse_step(step)
        if technique.name == "distill" and args.get("student") == "same":
            continue
        if technique.family not in families:
            families.append(technique.family)
    return families
