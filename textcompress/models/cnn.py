"""A convolutional text classifier (Kim, 2014, "Convolutional neural networks for sentence
classification"): everything its forward pass needs is in this file.

Word-piece embedding -> parallel 1-D convolutions of several widths -> ReLU -> max over time
-> dropout -> linear head. Inputs are the transformer's (input_ids, attention_mask,
right-padded). Padding never changes a sentence's result: padded embeddings are zeroed, which
is what a convolution's own zero padding feeds at the sentence's ends anyway, and only windows
that touch a real token take part in the max.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from textcompress.errors import ModelError


@dataclass
class ConvConfig:
    vocab_size: int
    embedding_size: int
    filters: int = 100  # per kernel size
    kernel_sizes: list[int] = field(default_factory=lambda: [3, 4, 5])
    dropout: float = 0.5
    num_labels: int = 2

    def __post_init__(self):
        self.kernel_sizes = list(self.kernel_sizes)
        if not self.kernel_sizes or min(self.kernel_sizes) < 1 or self.filters < 1:
            raise ModelError(f"kernel_sizes {self.kernel_sizes} and filters {self.filters} must be positive",
                             "give the cnn student at least one kernel size and filters of 1 or more")


class ConvClassifier(nn.Module):
    kind = "cnn"  # textcompress.models.MODELS

    def __init__(self, config: ConvConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size)
        # Full padding (k - 1 each side): a window ending on the first token and one starting on the last.
        self.convs = nn.ModuleList(nn.Conv1d(config.embedding_size, config.filters, k, padding=k - 1)
                                   for k in config.kernel_sizes)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.filters * len(config.kernel_sizes), config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        real = attention_mask.to(torch.float32)
        x = (self.word_embeddings(input_ids) * real[..., None]).transpose(1, 2)  # (batch, embedding, seq)
        lengths = attention_mask.sum(dim=1, keepdim=True)
        pooled = []
        for conv, k in zip(self.convs, self.config.kernel_sizes):
            out = torch.relu(conv(x))  # (batch, filters, seq + k - 1)
            # Window t covers positions t-k+1 .. t: it touches a real token while t < length + k - 1.
            positions = torch.arange(out.shape[-1], device=out.device)[None, :]
            valid = (positions < lengths + (k - 1)).to(out.dtype)[:, None, :]
            pooled.append((out * valid).amax(dim=-1))  # ReLU outputs are >= 0, so zeroing drops them
        return self.classifier(self.dropout(torch.cat(pooled, dim=-1)))
