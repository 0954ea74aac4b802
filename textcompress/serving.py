"""Kept so that MLflow models registered before the serving code moved to textcompress.deploy
(their pickled python_model names `textcompress.serving.OnnxTextModel`) still load."""

from textcompress.deploy.serving import OnnxTextModel, ServingInputError  # noqa: F401
