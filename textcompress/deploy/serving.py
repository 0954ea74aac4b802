"""The MLflow pyfunc that serves a candidate: raw text in, labels and probabilities out.

It bundles the ONNX file, the tokenizer and the label map, and runs ONNX Runtime only
(no torch), so `mlflow models serve -m models:/<name>@champion --env-manager local` is light.

Serving contract:
- input: a DataFrame with a `text` column, a list of strings, or a dict {"text": [...]};
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


def texts_from_input(model_input, limit: int | None = MAX_BATCH) -> list[str]:
    """The texts of a request or a batch, checked against the serving contract; more than `limit`
    texts (None: no limit) are refused."""
    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise ServingInputError(f"the request has columns {list(model_input.columns)}; send a `text` column")
        texts = model_input["text"].tolist()
    elif isinstance(model_input, dict) and "text" in model_input:
        texts = list(model_input["text"]) if not isinstance(model_input["text"], str) else [model_input["text"]]
    elif isinstance(model_input, (list, tuple, pd.Series)):
        texts = list(model_input)
    elif isinstance(model_input, str):
        texts = [model_input]
    else:
        raise ServingInputError(f"cannot read texts from {type(model_input).__name__}; send a list of strings or a `text` column")
    if limit is not None and len(texts) > limit:
        raise ServingInputError(f"{len(texts)} texts in one request; the limit is {limit}: split the request")
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise ServingInputError(f"row {row}: text must be a string, got {type(text).__name__} ({text!r:.40})")
    return texts


class OnnxTextModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from textcompress.deploy.inference import OnnxTextClassifier

        model_dir = Path(context.artifacts["model_dir"])
        settings = json.loads((model_dir / "serving.json").read_text()) if (model_dir / "serving.json").is_file() else {}
        self.classifier = OnnxTextClassifier(model_dir, threads=settings.get("threads"), max_length=settings.get("max_length", 128))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        """Labels and probabilities for raw texts. Over HTTP a request holds at most MAX_BATCH texts;
        in-process (`mlflow.pyfunc.load_model(...).predict`, `mlflow models predict`, a Spark UDF)
        any number is scored, MAX_BATCH at a time."""
        texts = texts_from_input(model_input, MAX_BATCH if over_http() else None)
        labels, probabilities = [], []
        for start in range(0, len(texts), MAX_BATCH):
            chunk_labels, chunk_probabilities = self.classifier.predict(texts[start:start + MAX_BATCH])
            labels += list(chunk_labels)
            probabilities += chunk_probabilities.astype(float).tolist()
        return pd.DataFrame({"label": labels, "probability": probabilities, "empty_input": [not t.strip() for t in texts]})
