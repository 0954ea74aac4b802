"""Recovery: the fine-tune against the teacher that every family ends a step with.

The loss mixes soft labels from the cached teacher logits (KL with a temperature, or MSE on
logits as Tang et al. found better for small students) with the hard labels, and, with
`hidden_weight` / `attention_weight`, adds hidden-state MSE through a learned projection
where widths differ and attention-map KL (TinyBERT, MiniLM), each student layer learning from
the teacher layer `layer_map` names. The teacher's hidden states for the mapped layers are
cached on disk in fp16, keyed by the teacher's weights and the training ids, so a second
candidate mapping the same layers does not run the teacher again; when they would be large,
or attention maps are needed, the teacher runs on the fly. `with_augmented_data` adds
teacher-labelled augmented copies of the training set (Tang et al.), their labels cached too.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from textcompress.data import length_bucketed_batches, pad_batch
from textcompress.errors import RecipeError
from textcompress.fileio import atomic_path
from textcompress.models.encoder import TextClassifier
from textcompress.training import accuracy, kd_loss, predict_logits, train_classifier

# `teacher_states: auto` caches the mapped layers' hidden states up to this size (SST-2: about
# 0.7 GB a layer in fp16), and runs the teacher on the fly beyond it.
STATES_CACHE_LIMIT_BYTES = 3 << 30


def default_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer i learns from teacher layer ⌈(i+1)·T/S⌉ − 1: evenly spread, last to last."""
    return [max(0, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


# ---------------------------------------------------------------------------
# Teacher hidden states: computed once, fp16 on disk, reused by every candidate


# Bump when what is cached changes meaning (e.g. the forward pass that computes the states).
CACHE_VERSION = 1


def fingerprint(teacher: nn.Module, split) -> str:
    """Identifies (cache version, teacher config and weights, training ids): what cached states
    and labels depend on. The cache lives outside DVC, so this key is what keeps it honest."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}{sorted(vars(teacher.config).items())}".encode())
    for key, tensor in sorted(teacher.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(np.asarray([len(x) for x in split.input_ids], dtype=np.int64).tobytes())
    digest.update(np.concatenate(split.input_ids).astype(np.int64).tobytes())
    return digest.hexdigest()[:20]


class CachedTeacherStates:
    """The teacher's hidden states after chosen layers, for every training row's real tokens,
    as one fp16 array per layer (rows concatenated) under `cache_dir/<fingerprint>/`. Layers
    missing there are computed in one teacher pass and written atomically; `passes` counts them."""

    def __init__(self, teacher: TextClassifier, split, layers: list[int], cache_dir: str | Path,
                 device: str | None = "cpu"):
        self.lengths = np.asarray([len(x) for x in split.input_ids])
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.dir = Path(cache_dir) / fingerprint(teacher, split)
        self.passes = 0
        missing = sorted({j for j in layers if not self._path(j).is_file()})
        if missing:
            self._compute(teacher, split, missing, device)
        self.arrays = {j: np.load(self._path(j), mmap_mode="r") for j in set(layers)}

    def _path(self, layer: int) -> Path:
        return self.dir / f"layer{layer}.npy"

    @staticmethod
    def size_bytes(teacher: TextClassifier, split, layers: list[int]) -> int:
        return sum(len(x) for x in split.input_ids) * teacher.config.hidden_size * 2 * len(set(layers))

    @torch.inference_mode()
    def _compute(self, teacher: TextClassifier, split, layers: list[int], device) -> None:
        from textcompress.training import resolve_device

        device = resolve_device(device)
        teacher.eval().to(device)
        self.dir.mkdir(parents=True, exist_ok=True)
        shape = (int(self.offsets[-1]), teacher.config.hidden_size)
        with contextlib.ExitStack() as stack:
            tmp = {j: stack.enter_context(atomic_path(self._path(j))) for j in layers}
            out = {j: np.lib.format.open_memmap(tmp[j], mode="w+", dtype=np.float16, shape=shape) for j in layers}
            for index in length_bucketed_batches(self.lengths, 128, shuffle=False):
                ids, mask = (t.to(device) for t in pad_batch([split.input_ids[i] for i in index]))
                _, hidden, _ = teacher.forward_with_hidden(ids, mask)
                for j in layers:
                    states = hidden[j + 1].to(torch.float16).cpu().numpy()
                    for row, i in enumerate(index):
                        out[j][self.offsets[i]:self.offsets[i + 1]] = states[row, : self.lengths[i]]
            for array in out.values():
                array.flush()
            del out
        teacher.to("cpu")
        self.passes += 1

    def batch(self, index: np.ndarray, width: int, device) -> dict[int, torch.Tensor]:
        """Layer -> (rows, width, hidden) float32, zero at padding, rows in `index` order."""
        result = {}
        for j, array in self.arrays.items():
            padded = np.zeros((len(index), width, array.shape[1]), dtype=np.float32)
            for row, i in enumerate(index):
                padded[row, : self.lengths[i]] = array[self.offsets[i]:self.offsets[i + 1]]
            result[j] = torch.from_numpy(padded).to(device)
        return result


# ---------------------------------------------------------------------------
# The loss


class DistillationLoss(nn.Module):
    """Soft labels from the cached teacher logits (KL at a temperature, or MSE on logits) mixed
    with the hard labels, plus hidden-state MSE and attention-map KL for the mapped layers, the
    teacher's states read from `states` (a CachedTeacherStates) or computed on the fly. Its
    projections, which map a narrower student's width onto the teacher's, train with the student."""

    def __init__(self, teacher: TextClassifier, teacher_logits: np.ndarray, student_hidden: int, layer_map: list[int],
                 temperature: float, alpha: float, hidden_weight: float, attention_weight: float,
                 logit_loss: str = "kl", states: CachedTeacherStates | None = None,
                 projection_init: torch.Tensor | None = None):
        super().__init__()
        object.__setattr__(self, "teacher", teacher)  # not a submodule: its weights must not train
        self.soft = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
        self.layer_map, self.temperature, self.alpha = layer_map, temperature, alpha
        self.hidden_weight, self.attention_weight, self.logit_loss = hidden_weight, attention_weight, logit_loss
        object.__setattr__(self, "states", states)
        width = teacher.config.hidden_size
        self.projections = nn.ModuleList(
            nn.Linear(student_hidden, width, bias=False) if student_hidden != width else nn.Identity() for _ in layer_map)
        if projection_init is not None and student_hidden != width:
            for projection in self.projections:  # start as the map back from the student's basis
                projection.weight.data.copy_(projection_init)

    def forward(self, model, ids, mask, labels, index):
        maps = self.attention_weight > 0
        intermediate = bool(self.hidden_weight) or maps
        if intermediate:
            logits, hidden, attention = model.forward_with_hidden(ids, mask, attentions=maps)
        else:
            logits = model(ids, mask)
        soft = self.soft[index].to(logits.device)
        if self.logit_loss == "mse":
            soft_part = nn.functional.mse_loss(logits, soft)
            loss = self.alpha * soft_part + (1.0 - self.alpha) * nn.functional.cross_entropy(logits, labels)
        else:
            loss = kd_loss(logits, soft, labels, self.temperature, self.alpha)
        if not intermediate:
            return loss
        teacher_hidden, teacher_attention = self._teacher(ids, mask, index, maps)
        real = mask.to(logits.dtype)[..., None]  # padding positions are not compared
        for i, j in enumerate(self.layer_map):
            if self.hidden_weight:
                diff = (self.projections[i](hidden[i + 1]) - teacher_hidden[j]) * real
                loss = loss + self.hidden_weight * diff.pow(2).sum() / (real.sum() * diff.shape[-1])
            if maps:
                t, s = teacher_attention[j], attention[i].clamp(min=1e-9)
                rows = real[:, None, :, :]  # (batch, 1, query, 1)
                kl = (t * (t.clamp(min=1e-9).log() - s.log())).sum(-1, keepdim=True)
                loss = loss + self.attention_weight * (kl * rows).sum() / (rows.sum() * t.shape[1])
        return loss

    def _teacher(self, ids, mask, index, maps: bool):
        """(layer -> hidden states, attention maps per layer or None) for this batch."""
        if self.states is not None and not maps:
            return self.states.batch(index, ids.shape[1], ids.device), None
        if next(self.teacher.parameters()).device != ids.device:
            self.teacher.to(ids.device)
        self.teacher.eval()
        with torch.no_grad():
            _, hidden, attention = self.teacher.forward_with_hidden(ids, mask, attentions=maps)
        return {j: hidden[j + 1] for j in set(self.layer_map)}, attention


def distillation_loss(model: nn.Module, ctx, args: dict, layer_map: list[int] | None,
                      projection_init: torch.Tensor | None = None) -> DistillationLoss | None:
    """The loss module a recipe step's arguments ask for; None for plain logit KD, which the
    training loop does itself."""
    intermediate = args.get("hidden_weight") or args.get("attention_weight")
    if not intermediate and args.get("logit_loss", "kl") == "kl":
        return None
    states = None
    if intermediate:
        if ctx.teacher.kind != "transformer":  # params validation says so first; this guards direct calls
            raise RecipeError(None, f"hidden_weight and attention_weight compare the teacher's layers, and this teacher "
                              f"is {ctx.teacher.kind}", "set them to 0 (logit distillation works for any teacher)")
        if model.kind != "transformer":
            raise RecipeError(None, f"hidden_weight and attention_weight need a transformer student, not "
                              f"{model.kind}; set them to 0", "hidden_weight: 0 and attention_weight: 0 in this step "
                              "(logit distillation works for any student)")
        if args.get("attention_weight") and model.config.attention != "softmax":
            raise RecipeError(None, "attention-map distillation needs softmax attention in the student",
                              "set attention_weight: 0")
        layer_map = layer_map or default_layer_map(model.config.num_layers, ctx.teacher.config.num_layers)
        if args.get("attention_weight"):
            heads = [(model.config.layer_heads[i], ctx.teacher.config.layer_heads[j]) for i, j in enumerate(layer_map)]
            if any(s != t for s, t in heads):
                raise RecipeError(None, f"attention-map distillation compares maps head by head, but the student's heads per "
                                  f"mapped layer differ from the teacher's {heads}", "set attention_weight: 0 (use hidden_weight)")
        states = teacher_states(ctx, layer_map, args)
    return DistillationLoss(ctx.teacher, ctx.teacher_logits, getattr(model.config, "hidden_size", 0), layer_map or [],
                            args["temperature"], args["alpha"], args.get("hidden_weight", 0.0),
                            args.get("attention_weight", 0.0), args.get("logit_loss", "kl"), states, projection_init)


def teacher_states(ctx, layer_map: list[int], args: dict) -> CachedTeacherStates | None:
    """Cached states for the mapped layers, or None (the teacher runs on the fly): attention maps
    are always computed on the fly, and `teacher_states: auto` caches only below the size limit."""
    mode = args.get("teacher_states", "auto")
    if mode == "cache" and ctx.cache_dir is None:
        raise RecipeError(None, "teacher_states: cache needs runtime.cache_dir",
                          "set runtime.cache_dir, or use teacher_states: auto")
    if mode == "live" or args.get("attention_weight") or ctx.cache_dir is None:
        return None
    if mode == "auto" and CachedTeacherStates.size_bytes(ctx.teacher, ctx.train, layer_map) > STATES_CACHE_LIMIT_BYTES:
        return None
    return CachedTeacherStates(ctx.teacher, ctx.train, layer_map, ctx.cache_dir, ctx.device)


# ---------------------------------------------------------------------------
# BERT students: cut from teacher layers, optionally narrowed


# ---------------------------------------------------------------------------
# The recovery fine-tune


def word_embeddings(model: nn.Module) -> nn.Embedding:
    return model.embeddings.word_embeddings if model.kind == "transformer" else model.word_embeddings


def recover(model: nn.Module, ctx, args: dict, desc: str, step_hook=None, layer_map: list[int] | None = None,
            projection_init: torch.Tensor | None = None) -> list[dict]:
    """Fine-tune a modified model against the teacher's cached logits, in place: the recovery step
    that pruning, sharing, decomposition and linear attention call after changing the model.
    `freeze_embeddings` keeps the word-piece table fixed: it is most of a small model's
    parameters, the teacher already tuned it, and its optimiser update dominates a step on CPU."""
    if args["epochs"] <= 0:
        return []
    loss_module = distillation_loss(model, ctx, args, layer_map, projection_init)
    # What the change alone cost, beside what recovery brought: a recovery fine-tune can also
    # lose accuracy (a model still close to the converged teacher, re-warmed to a high lr).
    before = accuracy(predict_logits(model, ctx.validation, device=ctx.device), ctx.validation.labels)
    frozen = [word_embeddings(model).weight] if args.get("freeze_embeddings") else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        history = train_classifier(
            model.train(), ctx.train, epochs=args["epochs"], lr=args["lr"], batch_size=args["batch_size"],
            warmup=args["warmup"], seed=ctx.seed, teacher_logits=ctx.teacher_logits, temperature=args["temperature"],
            alpha=args["alpha"], validation=ctx.validation, desc=desc, step_hook=step_hook, device=ctx.device,
            loss_module=loss_module, precision=ctx.precision)
        if history:
            history[0] = {"validation_accuracy_before": before, **history[0]}
        return history
    finally:
        for p in frozen:
            p.requires_grad_(True)
        ctx.teacher.to("cpu")


def with_augmented_data(ctx, multiplier: int):
    """A context whose training set adds `multiplier` augmented copies labelled by the teacher
    (their logits cached beside the hidden states, so other candidates reuse them)."""
    import dataclasses

    from textcompress.data import Split
    from textcompress.techniques.augmentation import augmented_split
    from textcompress.training import predict_logits

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(ctx.tokenizer_file))  # BERT's [MASK], RoBERTa's <mask>, else unknown
    mask_id = next((i for t in ("[MASK]", "<mask>", "[UNK]", "<unk>") if (i := tokenizer.token_to_id(t)) is not None), 0)
    extra = augmented_split(ctx.train, multiplier, mask_id, ctx.seed)
    cached = Path(ctx.cache_dir) / fingerprint(ctx.teacher, extra) / "logits.npy" if ctx.cache_dir else None
    if cached is not None and cached.is_file():  # another candidate with the same augmentation labelled it
        logits = np.load(cached)
    else:
        logits = predict_logits(ctx.teacher, extra, device=ctx.device, desc="teacher labels for augmented data")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp, open(tmp, "wb") as f:
                np.save(f, logits)
    train = Split(ctx.train.texts + extra.texts, ctx.train.input_ids + extra.input_ids,
                  np.concatenate([ctx.train.labels, logits.argmax(-1)]))
    return dataclasses.replace(ctx, train=train, teacher_logits=np.concatenate([ctx.teacher_logits, logits]))
