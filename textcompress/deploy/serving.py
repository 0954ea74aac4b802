"""The MLflow pyfunc that serves a candidate: raw text in, labels and probabilities out.

It bundles the ONNX file, the tokenizer and the label map, and runs ONNX Runtime only
(no torch), so `mlflow models serve -m models:/<name>@champion --env-manager local` is light.

Serving contract:
- input: a DataFrame with a `text` column, a list of strings, or a dict {"text": [...]}; a model
  trained on sentence pairs (`data.text_pair_column`) takes a `text_pair` column (or key) beside
  `text`, or a list of [text, text_pair] pairs;
- texts are truncated to `max_length` word-pieces (the same as in training);
- an empty or whitespace-only text gets a prediction from the empty input ([CLS] [SEP]),
  flagged by `empty_input: true` so callers can ignore it;
- a non-string text, or more than MAX_BATCH texts in one request, is refused with a
  message that says which row and what to send instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

MAX_BATCH = 1024  # texts in one HTTP request; in-process scoring takes any number, MAX_BATCH at a time
# MLflow's scoring server sets this in its process (mlflow.environment_variables): requests come over HTTP.
SERVING_ENVIRONMENT = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"


def over_http() -> bool:
    return os.environ.get(SERVING_ENVIRONMENT, "").lower() == "true"


class ServingInputError(MlflowException):
    """A request that breaks the serving contract: the scoring server answers 400 with this message."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def texts_from_input(model_input, limit: int | None = MAX_BATCH, pairs: bool = False) -> list:
    """The texts of a request or a batch, checked against the serving contract: strings, or
    (text, text_pair) tuples for a model of sentence pairs; more than `limit` rows (None: no
    limit) are refused."""
    columns = ("text", "text_pair") if pairs else ("text",)
    if isinstance(model_input, pd.DataFrame) or (isinstance(model_input, dict) and "text" in model_input):
        given = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else list(model_input)
        if any(c not in given for c in columns):
            raise ServingInputError(f"the request has columns {given}; send {' and '.join(f'a `{c}` column' for c in columns)}")
        values = [[v] if isinstance(v, str) else list(v) for v in (model_input[c] for c in columns)]
        if pairs and len(values[0]) != len(values[1]):
            raise ServingInputError(f"{len(values[0])} texts but {len(values[1])} text_pairs; send one text_pair per text")
        texts = list(zip(*values)) if pairs else values[0]
    elif isinstance(model_input, (list, tuple, pd.Series)):
        texts = [tuple(t) if pairs and isinstance(t, (list, tuple)) else t for t in model_input]
    elif isinstance(model_input, str) and not pairs:
        texts = [model_input]
    else:
        want = "a list of [text, text_pair] pairs or `text` and `text_pair` columns" if pairs else \
            "a list of strings or a `text` column"
        raise ServingInputError(f"cannot read texts from {type(model_input).__name__}; send {want}")
    if limit is not None and len(texts) > limit:
        raise ServingInputError(f"{len(texts)} texts in one request; the limit is {limit}: split the request")
    for row, text in enumerate(texts):
        if pairs and not (isinstance(text, tuple) and len(text) == 2):
            raise ServingInputError(f"row {row}: this model reads sentence pairs; send [text, text_pair], got {text!r:.60}")
        for name, part in zip(columns, text if pairs else (text,)):
            if not isinstance(part, str):
                raise ServingInputError(f"row {row}: {name} must be a string, got {type(part).__name__} ({part!r:.40})")
    return texts


class OnnxTextModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from textcompress.deploy.inference import OnnxTextClassifier

        model_dir = Path(context.artifacts["model_dir"])
        settings = json.loads((model_dir / "serving.json").read_text()) if (model_dir / "serving.json").is_file() else {}
        self.classifier = OnnxTextClassifier(model_dir, threads=settings.get("threads"), max_length=settings.get("max_length", 128))
        self.pairs = settings.get("pairs", False)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        """Labels and probabilities for raw texts. Over HTTP a request holds at most MAX_BATCH texts;
        in-process (`mlflow.pyfunc.load_model(...).predict`, `mlflow models predict`, a Spark UDF)
        any number is scored, MAX_BATCH at a time."""
        texts = texts_from_input(model_input, MAX_BATCH if over_http() else None, self.pairs)
        labels, probabilities = [], []
        for start in range(0, len(texts), MAX_BATCH):
            chunk_labels, chunk_probabilities = self.classifier.predict(texts[start:start + MAX_BATCH])
            labels += list(chunk_labels)
            probabilities += chunk_probabilities.astype(float).tolist()
        empty = [not all(part.strip() for part in (t if isinstance(t, tuple) else (t,))) for t in texts]
        return pd.DataFrame({"label": labels, "probability": probabilities, "empty_input": empty})
