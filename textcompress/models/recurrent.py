"""Recurrent text classifiers (LSTM or GRU, uni- or bidirectional): everything their forward
pass needs is in this file.

Word-piece embedding (optionally narrower than the table it was initialised from) ->
stacked recurrent layers -> pooling over real tokens -> optional ReLU layer -> linear head,
as in Tang et al. (2019), "Distilling task-specific knowledge from BERT into simple neural
networks". Inputs are the transformer's (input_ids, attention_mask, right-padded), so every
stage and the ONNX serving contract stay the same.

Padding never changes a sentence's result: the backward direction reads each row's real
tokens reversed in place (a gather), so it starts at the sentence's last real token instead
of at the padding, and pooling ignores padded positions. That is also what keeps ONNX export
simple: a plain LSTM/GRU op per direction, no packed sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from textcompress.errors import ModelError

CELLS = ("lstm", "gru")
POOLINGS = ("max", "mean", "last")


@dataclass
class RecurrentConfig:
    vocab_size: int
    embedding_size: int
    hidden_size: int  # per direction
    cell: str = "lstm"
    num_layers: int = 1
    bidirectional: bool = True
    pooling: str = "max"
    head_size: int = 0  # a ReLU layer of this width before the classifier (Tang et al.: 400); 0: none
    dropout: float = 0.1
    num_labels: int = 2
    # Compression state, written by the techniques: per direction ("layers.0.forward_rnn") its
    # [input rank, recurrent rank] (0: dense), and whether the backward direction runs the
    # forward direction's weights.
    ranks: dict = field(default_factory=dict)
    tied_directions: bool = False

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ModelError(f"cell {self.cell!r} is unknown",
                             f"use one of {', '.join(CELLS)} (teach.architecture, distill student)")
        if self.pooling not in POOLINGS:
            raise ModelError(f"pooling {self.pooling!r} is unknown", f"use one of {', '.join(POOLINGS)}")
        if min(self.embedding_size, self.hidden_size, self.num_layers) < 1:
            raise ModelError(f"embedding_size {self.embedding_size}, hidden_size {self.hidden_size} and num_layers "
                             f"{self.num_layers} must each be at least 1", "set them to 1 or more")

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)


def principal_projection(table: torch.Tensor, size: int) -> torch.Tensor:
    """Word vectors (vocabulary × width) projected onto their top `size` principal directions:
    how a narrower embedding starts from a wider model's table. `size` 0 or the width: a copy."""
    if size > table.shape[1]:
        raise ModelError(f"embedding_size {size} is wider than the table's {table.shape[1]}",
                         f"use an embedding_size of at most {table.shape[1]} (0: the table's own width)")
    if size in (0, table.shape[1]):
        return table.clone()
    _, _, vh = torch.linalg.svd(table - table.mean(dim=0), full_matrices=False)
    return table @ vh[:size].T


def reverse_real_tokens(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first `length` positions reversed, padding left where it is. Its own inverse."""
    positions = torch.arange(x.shape[1], device=x.device)[None, :]
    index = torch.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions)
    return x.gather(1, index[..., None].expand_as(x))


GATES = {"lstm": 4, "gru": 3}  # gate blocks stacked in the weight rows, in PyTorch's order


class FactorizedRNN(nn.Module):
    """One direction of an LSTM/GRU whose input-to-hidden matrix W_ih (gates·h × in) is
    up·down of rank `input_rank`, or whose hidden-to-hidden W_hh is hidden_up·hidden_down of
    rank `hidden_rank` (0: that matrix stays dense). The input factor runs before the
    recurrence (x·downᵀ, then an LSTM/GRU reading `input_rank` features: fewer
    multiply-adds); the recurrent one is multiplied out on every call, because the ONNX
    LSTM/GRU op takes a dense recurrent matrix: the file stores the factors, and ONNX Runtime
    folds their product once when it loads the model."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, input_rank: int = 0, hidden_rank: int = 0):
        super().__init__()
        rows = GATES[cell] * hidden_size
        self.cell, self.hidden_size = cell, hidden_size
        self.input_down = nn.Linear(input_size, input_rank, bias=False) if input_rank else None
        self.weight_ih = nn.Parameter(torch.empty(rows, input_rank or input_size))
        if hidden_rank:
            self.hidden_up = nn.Parameter(torch.empty(rows, hidden_rank))
            self.hidden_down = nn.Parameter(torch.empty(hidden_rank, hidden_size))
        else:
            self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        self.bias_ih = nn.Parameter(torch.zeros(rows))
        self.bias_hh = nn.Parameter(torch.zeros(rows))
        bound = hidden_size ** -0.5
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.uniform_(p, -bound, bound)

    def recurrent_weight(self) -> torch.Tensor:
        return self.hidden_up @ self.hidden_down if hasattr(self, "hidden_up") else self.weight_hh

    def forward(self, x: torch.Tensor):
        if self.input_down is not None:
            x = self.input_down(x)
        weights = [self.weight_ih, self.recurrent_weight(), self.bias_ih, self.bias_hh]
        h0 = x.new_zeros((1, x.shape[0], self.hidden_size))
        # Arguments: input, initial state, weights, has_biases, layers, dropout, train, bidirectional, batch_first
        if self.cell == "lstm":
            out, _, _ = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)
        else:
            out, _ = torch.gru(x, h0, weights, True, 1, 0.0, self.training, False, True)
        return out, None


class RecurrentLayer(nn.Module):
    """One layer: a forward-direction RNN and, if bidirectional, one over the reversed real tokens
    (the same module when directions are tied)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, bidirectional: bool,
                 ranks: tuple[list[int], list[int]] = ([0, 0], [0, 0]), tied: bool = False):
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU

        def direction(input_rank: int, hidden_rank: int) -> nn.Module:
            if input_rank or hidden_rank:
                return FactorizedRNN(cell, input_size, hidden_size, input_rank, hidden_rank)
            return rnn(input_size, hidden_size, batch_first=True)

        self.forward_rnn = direction(*ranks[0])
        self.backward_rnn = None
        if bidirectional:
            self.backward_rnn = self.forward_rnn if tied else direction(*ranks[1])

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out, _ = self.forward_rnn(x)
        if self.backward_rnn is None:
            return out
        back, _ = self.backward_rnn(reverse_real_tokens(x, lengths))
        return torch.cat([out, reverse_real_tokens(back, lengths)], dim=-1)


class RecurrentClassifier(nn.Module):
    kind = "recurrent"  # textcompress.models.MODELS

    def __init__(self, config: RecurrentConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size)
        sizes = [config.embedding_size] + [config.output_size] * (config.num_layers - 1)
        self.layers = nn.ModuleList(
            RecurrentLayer(config.cell, size, config.hidden_size, config.bidirectional,
                           tuple(config.ranks.get(f"layers.{i}.{d}_rnn", [0, 0]) for d in ("forward", "backward")),
                           config.tied_directions)
            for i, size in enumerate(sizes))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Sequential(nn.Linear(config.output_size, config.head_size), nn.ReLU(),
                                  nn.Dropout(config.dropout)) if config.head_size else nn.Identity()
        self.classifier = nn.Linear(config.head_size or config.output_size, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(dim=1)
        x = self.dropout(self.word_embeddings(input_ids))
        for layer in self.layers:
            x = self.dropout(layer(x, lengths))
        return self.classifier(self.head(self.pool(x, attention_mask, lengths)))

    def pool(self, x: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        real = attention_mask[..., None].to(x.dtype)
        if self.config.pooling == "max":
            return (x * real - (1.0 - real) * 1e4).amax(dim=1)
        if self.config.pooling == "mean":
            return (x * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)
        # last: the forward direction's state at the last real token; the backward direction
        # ended at the first token.
        h = self.config.hidden_size
        last = x.gather(1, (lengths - 1).clamp(min=0)[:, None, None].expand(-1, 1, x.shape[-1]))[:, 0]
        return torch.cat([last[:, :h], x[:, 0, h:]], dim=-1) if self.config.bidirectional else last
