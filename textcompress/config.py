"""params.yaml: one file of knobs. Loading merges the defaults below and validates,
so every stage sees a complete config and a mistake is reported with its key."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from textcompress.errors import ParamsError

DEFAULTS: dict = {
    "seed": 42,
    "data": {
        "train": "data/sst2/train.tsv",
        "validation": "data/sst2/validation.tsv",
        "test": None,
        "format": "auto",  # auto | tsv | csv | jsonl | parquet | hf (a Hugging Face dataset id in `train`)
        "text_column": "sentence",
        "label_column": "label",
        "max_length": 128,
        "limit_train": None,  # keep the first N training rows (quick profiles)
        # Carve this fraction of training rows (seeded, random) into a `selection` split that
        # promotion.select_on: selection chooses candidates on, so validation only gates.
        "selection_fraction": 0.0,
    },
    "base_model": "minilm-l6",
    "teach": {
        "finetuned_teacher": None,  # a bundle or BERT classifier directory: skip fine-tuning
        # transformer: fine-tune the base; lstm / gru: train the recurrent classifier below, its
        # word-piece embedding from the base's table (projected when narrower) or from scratch.
        "architecture": "transformer",
        "recurrent": {"bidirectional": True, "layers": 1, "hidden_size": 300, "embedding_size": 0, "pooling": "max",
                      "head_size": 0, "dropout": 0.2, "embeddings": "base"},
        "pooling": "mean",
        "epochs": 2,
        "lr": 1.0e-4,
        "batch_size": 32,
        "warmup": 0.06,
        "weight_decay": 0.01,
    },
    "export": {"opset": 17, "parity_tolerance": 1.0e-4, "agreement_gate": 0.98},
    "evaluate": {"bootstrap": 1000},
    "benchmark": {"threads": 1, "warmup": 10, "batch_size": 32, "max_sentences": None},
    "candidates": {"teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}]},
    "promotion": {
        "registered_model": "sst2-classifier",
        "max_accuracy_drop": 1.0,
        "objective": "latency_p50_ms",
        # McNemar's test of challenger vs champion on the same validation rows is always reported;
        # with require_significance, a challenger significantly less accurate is not promoted.
        "require_significance": False,
        # Where the accuracy budget is checked when choosing among candidates: validation, or the
        # selection split carved from training (data.selection_fraction); validation still gates.
        "select_on": "validation",
        "significance_level": 0.05,
    },
    "mlflow": {"tracking_uri": "sqlite:///mlflow.db", "experiment": "textcompress"},
    "pipeline": {"push_remote": None},  # a writable DVC remote of your own to push artifacts to
    # Who hears about a run: events from failure, promotion, completion; sinks as in tasks/notify.py.
    "notify": {"events": ["failure", "promotion"], "webhook": None, "block": None, "log_file": None},
    # `textcompress schedule`: a Prefect deployment of the pipeline served on this cron schedule.
    "schedule": {"name": "textcompress-scheduled", "cron": "0 3 * * 1"},
    # Long-input benchmark of the attention kinds (ONNX Runtime CPU, batch 1, random weights).
    "attention_benchmark": {"lengths": [128, 256, 512, 1024, 2048, 4096], "kinds": ["softmax", "linear", "hedgehog", "performer", "linformer"],
                            "threads": 1, "repeats": 3, "performer_features": 64, "linformer_length": 256},
    # Not tracked by DVC. threads: torch threads for training (None = all cores);
    # device: where training runs (auto = the GPU when there is one); cache_dir: the teacher's
    # hidden states and augmented-data labels that distillation candidates share (keyed by the
    # teacher's weights and the data), outside the work tree so that sweep workspaces share it too.
    # checkpoint_every: `teach` saves its state every N steps (0: never), so a killed run resumes there;
    # processes: `teach` under torchrun with this many processes (GPUs, or CPU processes over gloo).
    "runtime": {"threads": None, "device": "auto", "cache_dir": "~/.cache/textcompress/teacher-states",
                "checkpoint_every": 500, "processes": 1},
}

REQUIRED_CANDIDATES = ("teacher", "int8-dynamic")
ATTENTIONS = ("softmax", "linear", "hedgehog", "performer", "linformer")  # as in modeling.py, which imports torch


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
    params = _merge(copy.deepcopy(DEFAULTS), raw, path, "")
    _validate(params, path)
    return params


def _merge(base: dict, override: dict, path: Path, prefix: str) -> dict:
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ParamsError(path, dotted, "is not a known setting", f"remove it or use one of {sorted(base)}")
        if isinstance(base[key], dict) and key != "candidates":
            if not isinstance(value, dict):
                raise ParamsError(path, dotted, f"must be a mapping, got {type(value).__name__}", "see the default params.yaml")
            _merge(base[key], value, path, dotted + ".")
        else:
            base[key] = value
    return base


def _validate_recurrent_teacher(teach: dict, path: Path) -> None:
    if teach["architecture"] not in ("transformer", "lstm", "gru"):
        raise ParamsError(path, "teach.architecture", f"unknown architecture {teach['architecture']!r}", "use transformer, lstm or gru")
    rnn = teach["recurrent"]
    for key, low in (("layers", 1), ("hidden_size", 1), ("embedding_size", 0), ("head_size", 0)):
        if isinstance(rnn[key], bool) or not isinstance(rnn[key], int) or rnn[key] < low:
            raise ParamsError(path, f"teach.recurrent.{key}", f"must be a whole number ≥ {low}, got {rnn[key]!r}", "e.g. 300")
    choices = {"pooling": ("max", "mean", "last"), "embeddings": ("base", "scratch"), "bidirectional": (True, False)}
    for key, allowed in choices.items():
        if rnn[key] not in allowed or isinstance(rnn[key], bool) != isinstance(allowed[0], bool):
            raise ParamsError(path, f"teach.recurrent.{key}", f"must be one of {list(allowed)}, got {rnn[key]!r}",
                              f"use one of {', '.join(map(str, allowed))}")
    if isinstance(rnn["dropout"], bool) or not isinstance(rnn["dropout"], (int, float)) or not 0 <= rnn["dropout"] < 1:
        raise ParamsError(path, "teach.recurrent.dropout", f"must be from 0 to below 1, got {rnn['dropout']!r}", "e.g. 0.2")


def _validate(params: dict, path: Path) -> None:
    from textcompress.techniques import validate_recipe

    def positive(key: str, value, kind=(int, float)):
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            hint = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) else ""
            raise ParamsError(path, key, f"must be a positive {'whole ' if kind is int else ''}number, got {value!r}{hint}",
                              "set a positive value")

    for key, kind in (("data.max_length", int), ("teach.lr", (int, float)), ("teach.batch_size", int),
                      ("benchmark.threads", int), ("benchmark.batch_size", int), ("evaluate.bootstrap", int),
                      ("export.parity_tolerance", (int, float)), ("export.agreement_gate", (int, float)), ("export.opset", int)):
        section, name = key.split(".")
        positive(key, params[section][name], kind)
    every = params["runtime"]["checkpoint_every"]
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ParamsError(path, "runtime.checkpoint_every", f"must be a whole number of steps ≥ 0, got {every!r}",
                          "e.g. 500, or 0 for no checkpoints")
    positive("runtime.processes", params["runtime"]["processes"], int)
    for key in ("data.limit_train", "benchmark.max_sentences", "runtime.threads"):
        section, name = key.split(".")
        if params[section][name] is not None:
            positive(key, params[section][name], int)
    if isinstance(params["benchmark"]["warmup"], bool) or not isinstance(params["benchmark"]["warmup"], int) or params["benchmark"]["warmup"] < 0:
        raise ParamsError(path, "benchmark.warmup", f"must be a whole number ≥ 0, got {params['benchmark']['warmup']!r}", "e.g. 10")
    bench = params["attention_benchmark"]
    if not isinstance(bench["lengths"], list) or not bench["lengths"] or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in bench["lengths"]):
        raise ParamsError(path, "attention_benchmark.lengths", f"must be a list of lengths ≥ 2, got {bench['lengths']!r}",
                          "e.g. [128, 512, 2048, 4096]")
    if not isinstance(bench["kinds"], list) or any(k not in ATTENTIONS for k in bench["kinds"]):
        raise ParamsError(path, "attention_benchmark.kinds", f"must list kinds from {list(ATTENTIONS)}, got {bench['kinds']!r}",
                          "e.g. [softmax, linear, performer, linformer]")
    for key in ("threads", "repeats", "performer_features", "linformer_length"):
        positive(f"attention_benchmark.{key}", bench[key], int)
    if params["runtime"]["device"] not in ("auto", "cpu", "cuda") and not str(params["runtime"]["device"]).startswith("cuda:"):
        raise ParamsError(path, "runtime.device", f"unknown device {params['runtime']['device']!r}", "use auto, cpu, cuda or cuda:N")
    if params["data"]["format"] not in ("auto", "tsv", "csv", "jsonl", "parquet", "hf"):
        raise ParamsError(path, "data.format", f"unknown format {params['data']['format']!r}", "use auto, tsv, csv, jsonl, parquet or hf")
    from textcompress.promotion import OBJECTIVES

    if params["promotion"]["objective"] not in OBJECTIVES:
        raise ParamsError(path, "promotion.objective", f"unknown objective {params['promotion']['objective']!r}", f"use one of {sorted(OBJECTIVES)}")
    if not isinstance(params["teach"]["epochs"], (int, float)) or params["teach"]["epochs"] < 0:
        raise ParamsError(path, "teach.epochs", f"must be ≥ 0, got {params['teach']['epochs']!r}", "set a number of epochs")
    _validate_recurrent_teacher(params["teach"], path)
    if params["teach"]["pooling"] not in ("mean", "cls"):
        raise ParamsError(path, "teach.pooling", f"unknown pooling {params['teach']['pooling']!r}", "use mean or cls")
    events = params["notify"]["events"]
    if not isinstance(events, list) or any(e not in ("failure", "promotion", "completion") for e in events):
        raise ParamsError(path, "notify.events", f"must list events from failure, promotion, completion; got {events!r}",
                          "e.g. [failure, promotion]")
    cron = params["schedule"]["cron"]
    if not isinstance(cron, str) or len(cron.split()) != 5:
        raise ParamsError(path, "schedule.cron", f"must be a cron expression of five fields, got {cron!r}",
                          'e.g. "0 3 * * 1" (Mondays at 03:00)')
    fraction = params["data"]["selection_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 0.5:
        raise ParamsError(path, "data.selection_fraction", f"must be from 0 to below 0.5, got {fraction!r}", "e.g. 0.05, or 0 for none")
    if params["promotion"]["select_on"] not in ("validation", "selection"):
        raise ParamsError(path, "promotion.select_on", f"unknown split {params['promotion']['select_on']!r}", "use validation or selection")
    if params["promotion"]["select_on"] == "selection" and not fraction:
        raise ParamsError(path, "promotion.select_on", "is selection but data.selection_fraction is 0",
                          "set data.selection_fraction (e.g. 0.05) or select_on: validation")
    if not isinstance(params["promotion"]["require_significance"], bool):
        raise ParamsError(path, "promotion.require_significance", f"must be true or false, got {params['promotion']['require_significance']!r}",
                          "write true or false")
    level = params["promotion"]["significance_level"]
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ParamsError(path, "promotion.significance_level", f"must be between 0 and 1, got {level!r}", "e.g. 0.05")
    drop = params["promotion"]["max_accuracy_drop"]
    if isinstance(drop, bool) or not isinstance(drop, (int, float)):
        raise ParamsError(path, "promotion.max_accuracy_drop", f"must be a number of points, got {drop!r}", "e.g. 1.0")
    candidates = params["candidates"]
    if not isinstance(candidates, dict):
        raise ParamsError(path, "candidates", "must map candidate names to step lists", "see the default params.yaml")
    for name in REQUIRED_CANDIDATES:
        if name not in candidates:
            raise ParamsError(path, f"candidates.{name}", "is missing; the teacher and the int8 baseline are always "
                              "measured so that every ratio comes from one run", f"add `{name}` back")
    for name, recipe in candidates.items():
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise ParamsError(path, f"candidates.{name}", "names may use letters, digits, - and _ only", "rename it")
        validate_recipe(recipe, lambda problem, fix, n=name: ParamsError(path, f"candidates.{n}", problem, fix),
                        params["teach"]["architecture"])
