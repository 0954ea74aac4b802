"""What a technique is, what a recipe is made of, and what a technique receives.

A technique module declares its steps as `TECHNIQUES = (Technique(...), ...)`: the arguments
(defaults, choices, bounds), the model kinds it applies to, the checks its arguments need on
each kind, what it does to the PyTorch model (`apply`, in `compress`) and what it does to the
ONNX file (`export`, in `export`). The package discovers the declarations, so adding a technique
is its module and its test. This module imports no torch: params validation reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Mapping

from textcompress.models import MODELS, bundle_kind, converts

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from textcompress.data import Split

FAMILIES = ("pruning", "quantization", "distillation", "parameter_sharing", "tensor_decomposition", "linear_attention")
# The model kinds a recipe passes through: the teacher's, then each distillation student's
# (textcompress.models.MODELS: a teacher that runs in transformers takes distillation and int8 only).
MODEL_KINDS = tuple(MODELS)
TEACHER_KINDS = {"transformer": "transformer", "lstm": "recurrent", "gru": "recurrent"}  # teach.architecture


def teacher_kind(architecture: str, source: str | None) -> str:
    """The kind of the teacher `teach` makes: from teach.architecture, and for a transformer from
    the checkpoint it starts from (`source`: teach.finetuned_teacher or base_model), read from its
    config.json where it is a local folder (a hub id or the packaged base: a converted BERT)."""
    import json

    if architecture != "transformer" or not source:
        return TEACHER_KINDS[architecture]
    config = Path(source) / "config.json"
    try:
        fields = json.loads(config.read_text())
    except (OSError, ValueError):
        return "transformer"  # not a local folder: the stage that reads it says what is wrong
    if (Path(source) / "labels.json").is_file():  # a textcompress bundle
        return bundle_kind(fields) or "transformer"
    return "transformer" if converts(fields) else "transformers"

# Every step that changes the model ends with a recovery fine-tune against the teacher
# (techniques/recovery.py) and takes these arguments. logit_loss: kl (soft labels at
# `temperature`) or mse (on logits, Tang et al.); teacher_states: where hidden-state targets
# come from: auto (cached in fp16 below a size limit), cache, live.
RECOVERY = {"epochs": 1.0, "lr": 1.0e-4, "batch_size": 32, "warmup": 0.06, "temperature": 2.0, "alpha": 0.9,
            "freeze_embeddings": True, "hidden_weight": 0.0, "attention_weight": 0.0, "logit_loss": "kl",
            "teacher_states": "auto"}
RECOVERY_CHOICES = {"logit_loss": ("kl", "mse"), "teacher_states": ("auto", "cache", "live")}
RECOVERY_BOUNDS = {"hidden_weight": (0, None), "attention_weight": (0, None), "epochs": (0, None), "lr": (0, 1),
                   "batch_size": (1, None), "warmup": (0, 1), "temperature": (1e-3, None), "alpha": (0, 1)}
LAYER_LOSSES = ("hidden_weight", "attention_weight")  # compare transformer layers
SCOPES = ("global", "layer")
FRACTION_BELOW_ONE = (0, 0.99)

# (problem, fix): why a step's arguments cannot apply, as the user reads it.
Problem = tuple[str, str]


def _no_problem(given: dict, kind: str) -> Problem | None:
    return None


@dataclass(frozen=True)
class Technique:
    """One recipe step's declaration. `apply(model, args, ctx: TechniqueContext) -> (model, details)`
    runs in `compress`; `export(onnx_in, onnx_out, args, ctx: ExportContext) -> details` runs in
    `export`, on the file the previous export step wrote (the fp32 export first)."""
    name: str
    family: str
    defaults: dict
    choices: dict = field(default_factory=dict)  # allowed values per argument, where the set is closed
    bounds: dict = field(default_factory=dict)  # (low, high) per numeric argument, inclusive; None: no limit
    models: tuple[str, ...] = ("transformer",)  # the model kinds (MODEL_KINDS) it applies to
    # (arguments as written, the model's kind) -> (problem, fix) or None: rules the spec above cannot say.
    check: Callable[[dict, str], Problem | None] = _no_problem
    apply: Callable | None = None
    export: Callable | None = None
    # The model kind after this step (a distillation makes a student of another kind).
    produces: Callable[[dict, str], str] | None = None
    last: bool = False  # nothing may follow it (its model is exported by its own `export`)
    # Whether a step with these arguments counts for its family (a recovery-only distillation does not).
    counts: Callable[[dict], bool] = lambda args: True

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise TypeError(f"technique {self.name}: family {self.family!r} is not one of {FAMILIES}")
        unknown = set(self.models) - set(MODEL_KINDS)
        if unknown:
            raise TypeError(f"technique {self.name}: unknown model kinds {sorted(unknown)}")
        if self.apply is None and self.export is None:
            raise TypeError(f"technique {self.name}: declares neither apply nor export")

    @property
    def all_choices(self) -> dict:
        return {**RECOVERY_CHOICES, **self.choices}

    @property
    def all_bounds(self) -> dict:
        return {**RECOVERY_BOUNDS, **self.bounds}


@dataclass(frozen=True)
class Step:
    """A technique with its arguments: `given` as written in params.yaml, `args` with defaults filled."""
    technique: Technique
    given: Mapping
    position: int  # 1-based, as error messages count

    @cached_property
    def args(self) -> Mapping:
        return MappingProxyType({**self.technique.defaults, **self.given})

    @property
    def name(self) -> str:
        return self.technique.name

    def record(self, details: dict) -> dict:
        """What steps.json / export.json keep of a step that ran."""
        return {"technique": self.name, "family": self.technique.family, "args": dict(self.args), "details": details}


@dataclass(frozen=True)
class Recipe:
    """A candidate: its name and its steps, checked against the model kinds they pass through, and
    its own seed when it was written as `{seed: N, steps: [...]}` (None: the global `seed`)."""
    name: str
    steps: tuple[Step, ...]
    seed: int | None = None

    def trained_seed(self, default: int) -> int:
        """The seed the candidate trains with: its own, else `default` (params["seed"])."""
        return default if self.seed is None else self.seed

    @property
    def compress_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.technique.apply is not None)

    @property
    def export_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.technique.export is not None)

    @property
    def families(self) -> list[str]:
        """The families the recipe uses, in order, each once."""
        families: list[str] = []
        for step in self.steps:
            if step.technique.counts(step.args) and step.technique.family not in families:
                families.append(step.technique.family)
        return families

    def as_params(self) -> list[dict] | dict:
        """The recipe as params.yaml writes it: its steps, or `{seed, steps}` when it has its own seed."""
        steps = [{s.name: dict(s.given)} for s in self.steps]
        return steps if self.seed is None else {"seed": self.seed, "steps": steps}


@dataclass
class TechniqueContext:
    """What a technique's `apply` may use besides the model it transforms."""
    teacher: "nn.Module"
    train: "Split"
    validation: "Split"
    teacher_logits: "np.ndarray"
    seed: int = 0
    device: str = "cpu"
    tokenizer_file: Path | None = None  # the model's tokenizer; a vocabulary step replaces it
    max_length: int = 128
    workdir: Path | None = None  # scratch space for files a step makes (a trimmed tokenizer)
    cache_dir: Path | None = None  # teacher hidden states shared by candidates (None: not cached)
    precision: str = "fp32"  # training arithmetic (training.PRECISIONS)


class ExportContext:
    """What a technique's `export` may use: the PyTorch model it exports, the validation split
    (through the candidate's tokenizer), the ONNX opset, and training sentences for calibration,
    loaded on first use."""

    def __init__(self, prepared: Path, model_dir: Path, max_length: int, seed: int, model: "nn.Module | None" = None,
                 validation: "Split | None" = None, opset: int = 17):
        self.prepared, self.model_dir, self.max_length, self.seed = Path(prepared), Path(model_dir), max_length, seed
        self.model, self.validation, self.opset = model, validation, opset

    @cached_property
    def train(self) -> "Split":
        from textcompress.data import load_split
        from textcompress.deploy.inference import split_for_model

        return split_for_model(load_split(self.prepared, "train"), self.prepared, self.model_dir, self.max_length)
