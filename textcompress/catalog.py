"""Every artifact path of a project, named once. dvc.yaml writes the same paths (its stage
commands and outs); tests/test_catalog.py holds the two together. Paths are relative to the
project root; `Catalog(root)` makes them absolute for code that runs elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ARTIFACTS = Path("artifacts")
PREPARED = ARTIFACTS / "prepared"  # tokenized splits, labels.json, tokenizer.json
TEACHER = ARTIFACTS / "teacher"  # the teacher's model bundle
TEACHER_METRICS = ARTIFACTS / "teacher_metrics.json"
TEACHER_LOGITS = ARTIFACTS / "teacher_logits.npy"  # on the training set, shared by every distillation
CHECKPOINTS = ARTIFACTS / "checkpoints"  # teach's resumable state (not a DVC output)
COMPRESSED = ARTIFACTS / "compressed"  # <candidate>/: model bundle + steps.json
ONNX = ARTIFACTS / "onnx"  # <candidate>/: MODEL_FILE, PARENT_FILE, tokenizer, labels, export.json
METRICS = ARTIFACTS / "metrics"  # <candidate>.json: evaluation

REPORTS = Path("reports")
BENCHMARK = REPORTS / "benchmark.json"
ATTENTION_BENCHMARK = REPORTS / "attention_benchmark.json"
ATTENTION_BENCHMARK_PLOT = REPORTS / "attention_benchmark.png"
CANDIDATES_JSON = REPORTS / "candidates.json"
CANDIDATES_MD = REPORTS / "candidates.md"
MODEL_CARD = REPORTS / "model_card.md"
SUMMARY = REPORTS / "summary.json"
PARETO = REPORTS / "pareto.png"
FAILURES = REPORTS / "failures.json"  # written by the flow before benchmark: candidate -> why it failed
PROMOTION = REPORTS / "promotion.json"
RUN = REPORTS / "run.json"
SEARCH = REPORTS / "search"  # textcompress search: front.json, candidates.json/.md, front.png, recipes.yaml, cost.json
SEARCH_STUDY = Path("search.db")  # the search's Optuna study (SQLite), in its run directory

# Inside a candidate's folders.
MODEL_FILE = "model.onnx"
PARENT_FILE = "parent.onnx"  # a quantized candidate's fp32 parent, kept for the latency guardrail
PARENT_SUFFIX = "@fp32-parent"  # benchmark entries timing a quantized candidate's fp32 parent


def compressed(candidate: str) -> Path:
    return COMPRESSED / candidate


def onnx(candidate: str) -> Path:
    return ONNX / candidate


def metrics(candidate: str) -> Path:
    return METRICS / f"{candidate}.json"


@dataclass(frozen=True)
class Catalog:
    """The same paths under a project root."""
    root: Path

    def __getattr__(self, name: str) -> Path:
        value = globals().get(name.upper())
        if not isinstance(value, Path):
            raise AttributeError(name)
        return self.root / value

    def compressed(self, candidate: str) -> Path:
        return self.root / compressed(candidate)

    def onnx(self, candidate: str) -> Path:
        return self.root / onnx(candidate)

    def metrics(self, candidate: str) -> Path:
        return self.root / metrics(candidate)
