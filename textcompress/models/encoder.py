"""The transformer text classifier: everything its forward pass needs is in this file.

A BERT-family encoder written out in plain PyTorch, so that every compression family
can change its shape and so that it exports to ONNX with dynamic batch and sequence axes:
uneven heads and FFN widths per layer (pruning), fewer layers (distillation), layers that
share weights and a factorised word embedding (ALBERT-style sharing), low-rank linear
layers (SVD), and linear-cost attention (elu+1 kernel, Performer, Linformer).
Everything the shape depends on is in `EncoderConfig`, so a bundle reloads as saved.
Module names follow Hugging Face's BERT; `checkpoints.py` converts BERT, RoBERTa, XLM-RoBERTa,
DistilBERT and ELECTRA checkpoints into it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from textcompress.errors import ModelError, TextcompressError

@dataclass
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    num_labels: int = 2
    pooling: str = "mean"  # "mean" (how the MiniLM base was trained) or "cls"
    # Per-layer shapes; pruning makes them uneven. Filled from the scalars when empty.
    layer_heads: list[int] = field(default_factory=list)
    layer_ffn: list[int] = field(default_factory=list)
    # Attention: softmax (BERT), linear (elu+1 kernel), hedgehog (learned kernel), performer (FAVOR+), linformer.
    attention: str = "softmax"
    performer_features: int = 64   # random features per head (performer)
    linformer_length: int = 64     # keys and values are projected to this many positions (linformer)
    # ALBERT-style: vocab x embedding_size, then a projection to hidden_size (None: no factorisation).
    embedding_size: int | None = None
    # Cross-layer sharing: layer i runs the weights of layer shared_layers[i] (empty: none shared);
    # `share` says which part is shared: all, attention or ffn.
    shared_layers: list[int] = field(default_factory=list)
    share: str = "all"
    # Relaxed sharing: with a rank > 0, only the shared linears' weight matrices are tied, and every
    # layer of a group adds its own rank-r correction, bias and LayerNorms (0: whole modules tied).
    share_delta_rank: int = 0
    # Low-rank factorisation: module name -> rank of the two thin Linears that replace it.
    low_rank: dict[str, int] = field(default_factory=dict)
    # Quantization-aware training: Linear and Embedding modules that run as int8 (fake-quantized).
    fake_quant: list[str] = field(default_factory=list)
    # What converted checkpoints differ in (textcompress.models.checkpoints): the FFN activation;
    # the first position id (RoBERTa counts from pad id + 1); token types (0: none, DistilBERT);
    # ELECTRA's narrower embeddings, projected to hidden_size after their LayerNorm; a fine-tuned
    # head's dense layer and activation before the classifier (None: a linear head).
    hidden_act: str = "gelu"
    position_offset: int = 0
    embedding_width: int | None = None
    head_activation: str | None = None
    # The separator token: a sentence pair's second segment starts after its first one, and gets
    # token type 1 (None: every token type 0). Derived in the model, so callers pass ids and mask only.
    segment_separator: int | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ModelError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}",
                             "use a width that is a multiple of the head size (distill `width`, the base's config.json)")
        self.layer_heads = list(self.layer_heads) or [self.num_heads] * self.num_layers
        self.layer_ffn = list(self.layer_ffn) or [self.intermediate_size] * self.num_layers
        if self.attention not in ATTENTIONS:
            raise ModelError(f"attention {self.attention!r} is unknown", f"use one of {', '.join(ATTENTIONS)}")
        if self.share not in ("all", "attention", "ffn"):
            raise ModelError(f"share {self.share!r} is unknown", "use share: all, attention or ffn in the share_layers step")
        if self.share_delta_rank < 0:
            raise ModelError(f"share_delta_rank {self.share_delta_rank} is negative",
                             "use delta_rank: 0 (whole layers tied) or a positive rank in the share_layers step")
        for name in (self.hidden_act, self.head_activation or "tanh"):
            if name not in ACTIVATIONS:
                raise ModelError(f"activation {name!r} is not supported", f"use one of {', '.join(ACTIVATIONS)}")
        for i, j in enumerate(self.shared_layers):
            if not 0 <= j <= i:
                raise ModelError(f"shared_layers[{i}]={j}: a layer can only reuse itself or an earlier layer",
                                 "let share_layers set shared_layers (from `groups`), or fix the bundle's config.json")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


ATTENTIONS = ("softmax", "linear", "hedgehog", "performer", "linformer")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.gelu(x, approximate="tanh")


# Activations by their names in Hugging Face configs (`hidden_act`). Named functions, not lambdas:
# the recipe-prefix store (techniques/prefix_store.py) pickles a model whole.
ACTIVATIONS = {
    "gelu": nn.functional.gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": nn.functional.relu,
    "silu": nn.functional.silu,
    "swish": nn.functional.silu,
    "tanh": torch.tanh,
}


def segment_ids(input_ids: torch.Tensor, separator: int) -> torch.Tensor:
    """Token types of `[CLS] a [SEP] b [SEP]`: 0 up to the first separator, 1 after it (padding
    after a single sentence gets 1 too, which the attention mask hides)."""
    is_separator = (input_ids == separator).to(torch.int64)
    return ((torch.cumsum(is_separator, dim=1) - is_separator) > 0).to(torch.int64)


class Embeddings(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        width = config.embedding_width or config.hidden_size  # positions, types and the LayerNorm
        words = config.embedding_size or width
        self.word_embeddings = nn.Embedding(config.vocab_size, words)
        self.word_projection = nn.Linear(words, width, bias=False) if config.embedding_size else None
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, width)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, width) if config.type_vocab_size else None
        self.LayerNorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.project = nn.Linear(width, config.hidden_size) if config.embedding_width else None
        self.position_offset, self.separator = config.position_offset, config.segment_separator

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        positions = torch.arange(self.position_offset, seq + self.position_offset, device=input_ids.device)
        words = self.word_embeddings(input_ids)
        if self.word_projection is not None:
            words = self.word_projection(words)
        x = words + self.position_embeddings(positions)
        if self.token_type_embeddings is not None:
            x = x + (self.token_type_embeddings.weight[0] if self.separator is None
                     else self.token_type_embeddings(segment_ids(input_ids, self.separator)))
        x = self.dropout(self.LayerNorm(x))
        return x if self.project is None else self.project(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention. `kind` picks how queries meet keys; Q/K/V weights are the same
    for every kind, which is what lets a linear-attention student start from the teacher."""

    def __init__(self, config: EncoderConfig, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim, self.kind = num_heads, config.head_dim, config.attention
        inner = num_heads * config.head_dim
        self.query = nn.Linear(config.hidden_size, inner)
        self.key = nn.Linear(config.hidden_size, inner)
        self.value = nn.Linear(config.hidden_size, inner)
        self.dropout = nn.Dropout(config.dropout)
        self.head_gate = None  # set by importance scoring: one multiplier per head (not saved)
        self.recorded = None  # a list while attention maps are being recorded (softmax only)
        if self.kind == "performer":
            self.register_buffer("features", torch.empty(config.performer_features, config.head_dim))
            self.redraw_features()
        if self.kind == "hedgehog":
            # One learned map per head for queries and one for keys, identity at the start.
            eye = torch.eye(config.head_dim).repeat(num_heads, 1, 1)
            self.feature_map_q = nn.Parameter(eye.clone())
            self.feature_map_k = nn.Parameter(eye.clone())
            self.transfer_losses = None  # a list while attention transfer trains the maps
        if self.kind == "linformer":
            # Projections along the sequence, sliced to the input's length (Wang et al., 2020).
            k, n = config.linformer_length, config.max_position_embeddings
            self.key_projection = nn.Parameter(torch.randn(k, n) / math.sqrt(k))
            self.value_projection = nn.Parameter(torch.randn(k, n) / math.sqrt(k))

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """FAVOR+ draws orthogonal Gaussian features (blocks of a QR), rows scaled to chi lengths."""
        m, d = self.features.shape
        blocks = []
        for _ in range(math.ceil(m / d)):
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator))
            blocks.append(q.T)
        norms = torch.randn(m, d, generator=generator).norm(dim=1, keepdim=True)
        self.features.copy_(torch.cat(blocks)[:m] * norms)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape

        def heads(t):
            return t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        if self.kind == "softmax":
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask_bias
            probs = scores.softmax(dim=-1)
            if self.recorded is not None:
                self.recorded.append(probs)
            context = self.dropout(probs) @ v
        else:
            keep = (mask_bias > -1.0).to(x.dtype).transpose(-1, -2)  # (batch, 1, seq, 1): 1 for real tokens
            context = getattr(self, f"_{self.kind}")(q, k * keep, v * keep, keep)
        if self.head_gate is not None:
            context = context * self.head_gate.view(1, -1, 1, 1)
        return context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)

    def _linear(self, q, k, v, keep):
        """Katharopoulos et al. (2020): softmax(qk) replaced by phi(q)·phi(k), phi = elu + 1, so
        phi(q)·(phi(k)ᵀv) costs O(n) in sequence length."""
        return _kernel_attention(nn.functional.elu(q) + 1, (nn.functional.elu(k) + 1) * keep, v)

    def _hedgehog(self, q, k, v, keep):
        """Zhang et al. (2024): a learned positive feature map, phi(x) = [softmax(xW), softmax(−xW)]
        per head, trained to make phi(q)·phi(k) mimic softmax attention's weights (see
        techniques.linear_attention.transfer_attention), then linear in n like elu+1."""
        phi_q, phi_k = self._hedgehog_features(q, self.feature_map_q), self._hedgehog_features(k, self.feature_map_k) * keep
        if self.transfer_losses is not None:
            # Attention transfer: score phi against softmax weights from the same q and k, and pass
            # softmax attention on, so every layer sees the softmax model's states and learns alone.
            bias = (keep.transpose(-1, -2) - 1.0) * 1e9
            target = (q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias).softmax(-1)
            weights = phi_q @ phi_k.transpose(-1, -2)
            log_weights = (weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)).clamp_min(1e-30).log()
            # KL(softmax ‖ linear) per query, averaged over the real query positions.
            kl = (target * (target.clamp_min(1e-30).log() - log_weights)).sum(-1, keepdim=True)
            self.transfer_losses.append((kl * keep).sum() / (keep.sum() * q.shape[1]))
            return target.detach() @ v
        # Learned maps can make every phi(q)·phi(k) of a row tiny while their ratios are right:
        # normalise without elu+1's floor.
        return _kernel_attention(phi_q, phi_k, v, floor=1e-30)

    @staticmethod
    def _hedgehog_features(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        projected = t @ weight  # (batch, heads, seq, head_dim) @ (heads, head_dim, head_dim)
        return torch.cat([projected.softmax(-1), (-projected).softmax(-1)], dim=-1)

    def _performer(self, q, k, v, keep):
        """Choromanski et al. (2021): positive random features whose dot product estimates exp(q·k/√d)."""
        scale = self.head_dim ** -0.25
        q, k = q * scale, k * scale
        wq, wk = q @ self.features.T, k @ self.features.T
        # Subtracting maxima keeps exp() finite; a per-row constant cancels in the normalisation
        # for queries, while keys need one constant shared by all keys.
        phi_q = torch.exp(wq - (q * q).sum(-1, keepdim=True) / 2 - wq.amax(dim=-1, keepdim=True))
        wk_max = wk.amax(dim=(-1, -2), keepdim=True).detach()
        phi_k = torch.exp(wk - (k * k).sum(-1, keepdim=True) / 2 - wk_max) * keep
        return _kernel_attention(phi_q + 1e-6, phi_k + 1e-6 * keep, v)

    def _linformer(self, q, k, v, keep):
        seq = q.shape[2]
        k_short = self.key_projection[:, :seq] @ k   # (batch, heads, linformer_length, head_dim)
        v_short = self.value_projection[:, :seq] @ v
        scores = q @ k_short.transpose(-1, -2) / math.sqrt(self.head_dim)
        return self.dropout(scores.softmax(dim=-1)) @ v_short


def _kernel_attention(phi_q: torch.Tensor, phi_k: torch.Tensor, v: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Σ_j phi(q_i)·phi(k_j) v_j / Σ_j phi(q_i)·phi(k_j), computed right to left: O(n·d²)."""
    kv = phi_k.transpose(-1, -2) @ v                       # (batch, heads, features, head_dim)
    normaliser = phi_q @ phi_k.sum(dim=-2, keepdim=True).transpose(-1, -2)  # (batch, heads, seq, 1)
    return (phi_q @ kv) / normaliser.clamp(min=floor)


class AttentionOutput(nn.Module):
    def __init__(self, inner: int, hidden_size: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(inner, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(attended)) + residual)


class Attention(nn.Module):
    def __init__(self, config: EncoderConfig, num_heads: int):
        super().__init__()
        self.self = SelfAttention(config, num_heads)
        self.output = AttentionOutput(num_heads * config.head_dim, config.hidden_size, config.layer_norm_eps, config.dropout)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, hidden_size: int, ffn_size: int, activation: str = "gelu"):
        super().__init__()
        self.dense = nn.Linear(hidden_size, ffn_size)
        self.activation = ACTIVATIONS[activation]
        self.neuron_gate = None  # set by importance scoring: one multiplier per FFN neuron (not saved)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.dense(x))
        return x if self.neuron_gate is None else x * self.neuron_gate


class Output(AttentionOutput):
    """FFN down-projection, dropout, residual and LayerNorm (same shape as AttentionOutput)."""


class EncoderLayer(nn.Module):
    def __init__(self, config: EncoderConfig, num_heads: int, ffn_size: int):
        super().__init__()
        self.attention = Attention(config, num_heads)
        self.intermediate = Intermediate(config.hidden_size, ffn_size, config.hidden_act)
        self.output = Output(ffn_size, config.hidden_size, config.layer_norm_eps, config.dropout)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(
            EncoderLayer(config, h, f) for h, f in zip(config.layer_heads, config.layer_ffn)
        )
        # Sharing ties modules: the shared weights are one tensor, stored and exported once.
        for i, source in enumerate(config.shared_layers):
            if source == i:
                continue
            target, origin = self.layer[i], self.layer[source]
            if (config.layer_heads[i], config.layer_ffn[i]) != (config.layer_heads[source], config.layer_ffn[source]):
                raise ModelError(f"layer {i} cannot share layer {source}'s weights: their shapes differ",
                                 "share layers before pruning them, or prune the layers of a group to equal sizes")
            if config.share_delta_rank:
                continue  # relaxed: tied weight by weight below
            if config.share in ("all", "attention"):
                target.attention = origin.attention
            if config.share in ("all", "ffn"):
                target.intermediate, target.output = origin.intermediate, origin.output
        if config.share_delta_rank:
            self._relax_sharing(config)

    def _relax_sharing(self, config: EncoderConfig) -> None:
        """Every layer of a group of two or more gets a RelaxedLinear per shared linear, whose weight
        is the group leader's Parameter (Bae et al., 2024: recursive transformers with layer-wise LoRA)."""
        sources = config.shared_layers
        for i, source in enumerate(sources):
            if sources.count(source) < 2:
                continue
            for name in LAYER_LINEARS[config.share]:
                parent, _, child = name.rpartition(".")
                owner = self.layer[i].get_submodule(parent)
                dense = getattr(owner, child)
                relaxed = RelaxedLinear(dense.in_features, dense.out_features, config.share_delta_rank)
                if source != i:  # the leader (an earlier layer) is already relaxed
                    relaxed.weight = self.layer[source].get_submodule(name).weight
                setattr(owner, child, relaxed)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor, return_hidden: bool = False):
        hidden = [x]
        for layer in self.layer:
            x = layer(x, mask_bias)
            hidden.append(x)
        return (x, hidden) if return_hidden else x


class TextClassifier(nn.Module):
    """Encoder, pooling over real tokens, head (linear, or a fine-tuned checkpoint's dense layer
    and activation, then linear). Returns logits."""

    kind = "transformer"  # textcompress.models.MODELS

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.dropout = nn.Dropout(config.dropout)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size) if config.head_activation else None
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.apply(_init_weights)
        for name, rank in config.low_rank.items():
            dense = self.get_submodule(name)
            parent, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent), child, LowRankLinear(dense.in_features, dense.out_features, rank))
        for name in config.fake_quant:
            parent, _, child = name.rpartition(".")
            owner = self.get_submodule(parent)
            plain = getattr(owner, child)
            if not isinstance(plain, (FakeQuantLinear, FakeQuantEmbedding)):  # a shared module is listed once per layer
                setattr(owner, child, FakeQuantLinear(plain.in_features, plain.out_features, plain.bias is not None)
                        if isinstance(plain, nn.Linear) else FakeQuantEmbedding(plain.num_embeddings, plain.embedding_dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        # Additive bias: 0 for real tokens, a large negative number for padding.
        mask_bias = (1.0 - mask)[:, None, None, :] * -1e9
        hidden = self.encoder(self.embeddings(input_ids), mask_bias)
        return self.head(pool(hidden, mask, self.config.pooling))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.pooler is not None:
            pooled = ACTIVATIONS[self.config.head_activation](self.pooler(self.dropout(pooled)))
        return self.classifier(self.dropout(pooled))

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_hidden(input_ids, attention_mask)[1]

    def forward_with_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, attentions: bool = False):
        """(logits, hidden states: embeddings then each layer, attention maps per layer or None)."""
        mask = attention_mask.to(torch.float32)
        mask_bias = (1.0 - mask)[:, None, None, :] * -1e9
        layers = [layer.attention.self for layer in self.encoder.layer]
        for attn in layers:  # a module shared by several layers records once per use, in order
            attn.recorded = [] if attentions else None
        try:
            last, hidden = self.encoder(self.embeddings(input_ids), mask_bias, return_hidden=True)
            maps = [attn.recorded.pop(0) for attn in layers] if attentions else None
        finally:
            for attn in layers:
                attn.recorded = None
        return self.head(pool(last, mask, self.config.pooling)), hidden, maps


# An encoder layer's linears by part (what `share` or `low_rank: {modules}` names).
_ATTENTION_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
_FFN_LINEARS = ("intermediate.dense", "output.dense")
LAYER_LINEARS = {"all": _ATTENTION_LINEARS + _FFN_LINEARS, "attention": _ATTENTION_LINEARS, "ffn": _FFN_LINEARS}


class RelaxedLinear(nn.Module):
    """x·Wᵀ + b + (x·Dᵀ)·Uᵀ: W shared with the other layers of a group, b and the rank-r
    correction U·D this layer's own."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.weight = nn.Parameter(torch.empty(out_features, in_features).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.delta_down = nn.Linear(in_features, rank, bias=False)
        self.delta_up = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias) + self.delta_up(self.delta_down(x))


class LowRankLinear(nn.Module):
    """W ≈ U·V: in -> rank (no bias) -> out, for a rank well below min(in, out)."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class FakeQuantLinear(nn.Linear):
    """A Linear trained as it will run in int8 (quantization-aware training): its input is rounded
    to uint8 over a calibrated range (`input_range`), its weight to int8 per output channel, with
    straight-through gradients. Exported, the roundings become the QuantizeLinear/DequantizeLinear
    pairs that ONNX Runtime fuses into integer MatMuls.
    Weights use 7 bits of the int8 range (scale max|w|/63): ONNX Runtime's x86 kernels sum pairs of
    uint8 x int8 products in 16 bits, which overflow with full-range weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("input_range", torch.zeros(2))  # calibrated (min, max) of the input
        self.quantize = True  # False: run in fp32 (the parent exported beside the int8 model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return super().forward(x)
        low, high = self.input_range[0].clamp(max=0.0), self.input_range[1].clamp(min=0.0)
        scale = ((high - low) / 255.0).clamp(min=1e-8)
        zero_point = torch.round(-low / scale).to(torch.int32)
        x = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
        weight_scale = (self.weight.detach().abs().amax(dim=1) / 63.0).clamp(min=1e-8)
        weight = torch.fake_quantize_per_channel_affine(
            self.weight, weight_scale, torch.zeros_like(weight_scale, dtype=torch.int32), 0, -128, 127)
        return nn.functional.linear(x, weight, self.bias)


class FakeQuantEmbedding(nn.Embedding):
    """An embedding table trained as 8-bit (one symmetric scale for the table). It is stored as
    uint8 with zero point 128, the same grid as int8, because ONNX Runtime gathers uint8 rows
    directly but dequantizes a whole int8 table on every call."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__(num_embeddings, embedding_dim)
        self.quantize = True

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return super().forward(ids)
        scale = (self.weight.detach().abs().max() / 127.0).clamp(min=1e-8)
        table = torch.fake_quantize_per_tensor_affine(self.weight, scale, torch.full((), 128, dtype=torch.int32), 0, 255)
        return nn.functional.embedding(ids, table)


def set_fake_quant(model: nn.Module, enabled: bool) -> int:
    """Switch a quantization-aware model between int8 (fake-quantized) and fp32; returns how many
    modules it switched (0: the model has none)."""
    modules = [m for m in model.modules() if isinstance(m, (FakeQuantLinear, FakeQuantEmbedding))]
    for m in modules:
        m.quantize = enabled
    return len(modules)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    summed = (hidden * mask[..., None]).sum(dim=1)
    return summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters: a tensor shared by several modules counts once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# ---------------------------------------------------------------------------
# Bundles on disk: config.json + model.safetensors + tokenizer.json + labels.json


def save_bundle(model: nn.Module, out_dir: str | Path, tokenizer_file: str | Path, labels: list) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps({**asdict(model.config), "architecture": model.kind}, indent=2) + "\n")
    aliases = shared_aliases(model)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in aliases}
    save_file(state, str(out_dir / "model.safetensors"))
    if Path(tokenizer_file).resolve() != (out_dir / "tokenizer.json").resolve():
        shutil.copyfile(tokenizer_file, out_dir / "tokenizer.json")
    (out_dir / "labels.json").write_text(json.dumps(labels) + "\n")


def load_bundle(bundle_dir: str | Path) -> tuple[nn.Module, list]:
    bundle_dir = Path(bundle_dir)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "labels.json"):
        if not (bundle_dir / name).is_file():
            raise TextcompressError(f"{bundle_dir}: not a model bundle ({name} is missing). "
                                    "Fix: point at a directory written by `teach` or `compress`.")
    try:
        model = model_from_config(json.loads((bundle_dir / "config.json").read_text()))
    except TextcompressError as err:
        raise TextcompressError(f"{bundle_dir}/{err}") from err
    state = load_file(str(bundle_dir / "model.safetensors"))
    for alias, original in shared_aliases(model).items():
        state[alias] = state[original]  # stored once; the config ties the modules again
    model.load_state_dict(state)
    return model.eval(), json.loads((bundle_dir / "labels.json").read_text())


def model_from_config(config: dict) -> nn.Module:
    """A freshly initialised model of the kind a bundle's config.json names (`architecture`, a
    transformer when absent; textcompress.models.MODELS)."""
    from textcompress.models import MODELS, bundle_kind, model_classes

    config = dict(config)
    kind = bundle_kind(config)
    if kind is None:
        raise TextcompressError(f"config.json: unknown architecture {config['architecture']!r}. "
                                f"Fix: one of {', '.join(MODELS)} (a bundle written by `teach` or `compress`)")
    config.pop("architecture", None)
    config_class, model_class = model_classes(kind)
    return model_class(config_class(**config))


def shared_aliases(model: nn.Module) -> dict[str, str]:
    """State-dict keys that name a tensor already named by an earlier key (shared layers)."""
    first, aliases = {}, {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        ident = id(tensor)
        if ident in first:
            aliases[key] = first[ident]
        else:
            first[ident] = key
    return aliases
