"""A teacher that runs in transformers as it is: any `AutoModelForSequenceClassification` whose
architecture does not convert into the encoder (DeBERTa-v2/v3, ModernBERT, ...).

It is measured, exported to ONNX (eager attention, so the graph is plain ops) and distilled into
students like any teacher, but no structural step reaches inside it: a BERT student comes from
a `student_base` checkpoint with its own tokenizer, an LSTM/GRU/CNN student from its word pieces.
Its outputs are put in the data's label order (`label_rows`), so every stage reads them alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from textcompress.errors import TextcompressError
from textcompress.models.encoder import segment_ids


@dataclass
class HFClassifierConfig:
    hf: dict                     # the transformers config, as `to_dict()` gives it
    num_labels: int
    vocab_size: int
    label_rows: list[int] = field(default_factory=list)  # the model's output for each of the data's labels
    segment_separator: int | None = None  # a pair's first segment ends here (models with token types)


class HFClassifier(nn.Module):
    """input_ids, attention_mask -> logits in the data's label order."""

    kind = "transformers"  # textcompress.models.MODELS

    def __init__(self, config: HFClassifierConfig, model: nn.Module | None = None):
        super().__init__()
        self.config = config
        if model is None:  # rebuilt from a bundle: the weights are loaded next
            from transformers import AutoConfig, AutoModelForSequenceClassification

            fields = dict(config.hf)
            hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
            model = AutoModelForSequenceClassification.from_config(hf_config, attn_implementation="eager",
                                                                   dtype=torch.float32)
        self.model = model
        self.register_buffer("rows", torch.tensor(config.label_rows or list(range(config.num_labels))), persistent=False)
        self.uses_types = config.segment_separator is not None and (config.hf.get("type_vocab_size") or 0) > 1

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"token_type_ids": segment_ids(input_ids, self.config.segment_separator)} if self.uses_types else {}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
        return logits.index_select(1, self.rows)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()


def load_hf_classifier(folder: Path, num_labels: int, label_rows: list[int] | None,
                       separator: int | None) -> HFClassifier:
    """The checkpoint in `folder` through transformers: its own head with `label_rows`, else a
    fresh head of `num_labels` outputs."""
    from transformers import AutoModelForSequenceClassification

    options = {} if label_rows is not None else {"num_labels": num_labels}
    try:
        # fp32 whatever precision the checkpoint was saved in: training, export and quantization expect it.
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager",
                                                                   dtype=torch.float32, **options)
    except (ValueError, OSError, KeyError) as err:
        raise TextcompressError(f"{folder}: transformers cannot load it as a sequence classifier "
                                f"({err.__class__.__name__}: {str(err)[:200]}). Fix: point at a folder written by "
                                "`save_pretrained` of an encoder model (config.json and its weights)") from err
    config = HFClassifierConfig(model.config.to_dict(), num_labels, model.config.vocab_size,
                                list(label_rows) if label_rows is not None else [], separator)
    return HFClassifier(config, model)
