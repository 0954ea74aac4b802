"""The models: each one's whole forward pass in one file, and the one list of model kinds.

`MODELS` names every kind with the module and classes that build it. The kind is what a bundle's
config.json says (`architecture`), what each model class declares (`kind`), and what recipe steps
declare they apply to (techniques/base.py): transformer (the BERT-family encoder every structural
step works on; converted checkpoints load into it, models/checkpoints.py), transformers (a teacher
that runs in transformers as it is), recurrent (LSTM/GRU) and cnn (Kim). This module imports no
torch: params validation reads it."""

from __future__ import annotations

import importlib

MODELS = {
    "transformer": ("textcompress.models.encoder", "EncoderConfig", "TextClassifier"),
    "transformers": ("textcompress.models.hf_classifier", "HFClassifierConfig", "HFClassifier"),
    "recurrent": ("textcompress.models.recurrent", "RecurrentConfig", "RecurrentClassifier"),
    "cnn": ("textcompress.models.cnn", "ConvConfig", "ConvClassifier"),
}
LEGACY_KINDS = {"rnn": "recurrent"}  # what bundles written before one vocabulary call a kind

# Hugging Face checkpoints that convert exactly into the encoder (models/checkpoints.py holds how):
# these model types, with absolute positions and one of these activations. Any other classifier
# runs in transformers as it is. Params validation reads this too, without torch.
CONVERTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")
CONVERTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")


def converts(hf: dict) -> bool:
    """Whether a checkpoint's config.json describes a model that converts into the encoder."""
    activation = hf.get("hidden_act", hf.get("activation", "gelu"))
    return (hf.get("model_type", "bert") in CONVERTED_MODEL_TYPES and activation in CONVERTED_ACTIVATIONS
            and hf.get("position_embedding_type", "absolute") == "absolute")


def bundle_kind(config: dict) -> str | None:
    """The kind a bundle's config.json names (a transformer when it names none); None if unknown."""
    kind = config.get("architecture", "transformer")
    kind = LEGACY_KINDS.get(kind, kind)
    return kind if kind in MODELS else None


def model_classes(kind: str) -> tuple[type, type]:
    """(config class, model class) of a kind."""
    module, config_class, model_class = MODELS[kind]
    loaded = importlib.import_module(module)
    return getattr(loaded, config_class), getattr(loaded, model_class)
