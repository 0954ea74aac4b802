"""An exported candidate as the folder Hugging Face Optimum uses for ONNX classifiers: besides
`model.onnx` (inputs `input_ids`, `attention_mask`; output `logits`) and `tokenizer.json`, a
`config.json` with `id2label`/`label2id` and the tokenizer's `tokenizer_config.json` and
`special_tokens_map.json`, so `AutoConfig`, `AutoTokenizer` and ONNX Runtime (or Optimum's
`ORTModelForSequenceClassification`) load it as they load any exported classifier.

A transformer candidate's config says `model_type: bert` with its real sizes (per-layer heads
and FFN widths, which pruning makes uneven, are under `textcompress`); a teacher that ran in
transformers keeps its own config, with the data's labels. LSTM/GRU/CNN candidates
have no transformers model type: their config.json keeps the labels and names the architecture."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from textcompress.fileio import write_json

# Special tokens by role, in the spellings of BERT-style and RoBERTa-style vocabularies.
SPECIAL_TOKENS = {"cls_token": ("[CLS]", "<s>"), "sep_token": ("[SEP]", "</s>"), "pad_token": ("[PAD]", "<pad>"),
                  "unk_token": ("[UNK]", "<unk>"), "mask_token": ("[MASK]", "<mask>")}


def transformers_config(model, labels: list) -> dict:
    """config.json for a candidate whose model is `model` (of a kind of textcompress.models.MODELS)."""
    id2label = {str(i): str(label) for i, label in enumerate(labels)}
    config = {"id2label": id2label, "label2id": {name: int(i) for i, name in id2label.items()}, "num_labels": len(labels)}
    fields = vars(model.config)
    if model.kind == "transformers":  # a teacher run in transformers: its own config
        own = {k: v for k, v in fields["hf"].items() if k not in ("id2label", "label2id", "num_labels")}
        return {**own, **config}
    if model.kind != "transformer":  # a recurrent or CNN classifier: no transformers model type
        return {**config, "textcompress": {"architecture": model.kind, **_plain(fields)}}
    return {
        "architectures": ["BertForSequenceClassification"], "model_type": "bert", **config,
        "vocab_size": fields["vocab_size"], "hidden_size": fields["hidden_size"], "num_hidden_layers": fields["num_layers"],
        "num_attention_heads": fields["num_heads"], "intermediate_size": fields["intermediate_size"],
        "max_position_embeddings": fields["max_position_embeddings"], "type_vocab_size": fields["type_vocab_size"],
        "layer_norm_eps": fields["layer_norm_eps"], "hidden_act": fields.get("hidden_act", "gelu"),
        # What a plain BERT config cannot say: uneven layers, other attention, sharing, low rank, pooling.
        "textcompress": {"architecture": "transformer", **_plain(fields)},
    }


def _plain(fields: dict) -> dict:
    return json.loads(json.dumps(fields, default=str))


def write_tokenizer_config(tokenizer_file: Path, out_dir: Path, max_length: int) -> None:
    """tokenizer_config.json and special_tokens_map.json for `tokenizer_file`, as transformers writes
    them; the tokenizer.json itself is left as it is (it is what every stage tokenized with)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    specials = {role: next((t for t in spellings if t in vocab), None) for role, spellings in SPECIAL_TOKENS.items()}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_length,
                                   model_input_names=["input_ids", "attention_mask"],
                                   **{role: token for role, token in specials.items() if token})
    with tempfile.TemporaryDirectory() as scratch:
        fast.save_pretrained(scratch)
        (Path(out_dir) / "tokenizer_config.json").write_bytes((Path(scratch) / "tokenizer_config.json").read_bytes())
    # transformers 5 keeps the special tokens in tokenizer_config.json alone; older loaders read this file.
    write_json(Path(out_dir) / "special_tokens_map.json", {role: token for role, token in specials.items() if token})


def write_transformers_files(out_dir: Path, model, labels: list, tokenizer_file: Path, max_length: int) -> None:
    """config.json and the tokenizer's config files beside an exported model.onnx."""
    write_json(Path(out_dir) / "config.json", transformers_config(model, labels))
    write_tokenizer_config(tokenizer_file, out_dir, max_length)
