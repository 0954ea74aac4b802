"""Knowledge distillation: a smaller student learns from the teacher.

Students (`student:`):
- `bert`: a BERT-style encoder cut from the teacher (its embeddings, chosen layers and head);
  with `width` / `ffn` below the teacher's, the most important heads and FFN neurons are kept
  and the residual stream is projected onto its top principal directions, so a narrower
  student starts from a projection of the teacher instead of from scratch;
- `lstm`, `gru` (Tang et al., 2019) and `cnn` (Kim, 2014): their own word-piece embedding,
  initialised from the teacher's table (projected onto its principal directions when smaller);
- `same`: the current model, fine-tuned again (a recovery step).

The loss mixes soft labels from the cached teacher logits (KL with a temperature, or MSE on
logits as Tang et al. found better for small students) with the hard labels, and, with
`hidden_weight` / `attention_weight`, adds hidden-state MSE through a learned projection
where widths differ and attention-map KL (TinyBERT, MiniLM), each student layer learning from
the teacher layer `layer_map` names. The teacher's hidden states for the mapped layers are
cached on disk in fp16, keyed by the teacher's weights and the training ids, so a second
candidate mapping the same layers does not run the teacher again; when they would be large,
or attention maps are needed, the teacher runs on the fly. `recover` is what every other
family calls to fine-tune a modified model against the teacher with the same losses.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from textcompress.data import length_bucketed_batches, pad_batch
from textcompress.fileio import atomic_path
from textcompress.modeling import TextClassifier, count_parameters
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
        if not isinstance(model, TextClassifier):
            raise ValueError(f"hidden_weight and attention_weight need a transformer student, not "
                             f"{model.config.architecture}; set them to 0")
        if args.get("attention_weight") and model.config.attention != "softmax":
            raise ValueError("attention-map distillation needs softmax attention in the student; set attention_weight: 0")
        layer_map = layer_map or default_layer_map(model.config.num_layers, ctx.teacher.config.num_layers)
        if args.get("attention_weight"):
            heads = [(model.config.layer_heads[i], ctx.teacher.config.layer_heads[j]) for i, j in enumerate(layer_map)]
            if any(s != t for s, t in heads):
                raise ValueError(f"attention-map distillation compares maps head by head, but the student's heads per "
                                 f"mapped layer differ from the teacher's {heads}; set attention_weight: 0 (use hidden_weight)")
        states = teacher_states(ctx, layer_map, args)
    return DistillationLoss(ctx.teacher, ctx.teacher_logits, getattr(model.config, "hidden_size", 0), layer_map or [],
                            args["temperature"], args["alpha"], args.get("hidden_weight", 0.0),
                            args.get("attention_weight", 0.0), args.get("logit_loss", "kl"), states, projection_init)


def teacher_states(ctx, layer_map: list[int], args: dict) -> CachedTeacherStates | None:
    """Cached states for the mapped layers, or None (the teacher runs on the fly): attention maps
    are always computed on the fly, and `teacher_states: auto` caches only below the size limit."""
    mode = args.get("teacher_states", "auto")
    if mode == "cache" and ctx.cache_dir is None:
        raise ValueError("teacher_states: cache needs runtime.cache_dir; set it, or use teacher_states: auto")
    if mode == "live" or args.get("attention_weight") or ctx.cache_dir is None:
        return None
    if mode == "auto" and CachedTeacherStates.size_bytes(ctx.teacher, ctx.train, layer_map) > STATES_CACHE_LIMIT_BYTES:
        return None
    return CachedTeacherStates(ctx.teacher, ctx.train, layer_map, ctx.cache_dir, ctx.device)


# ---------------------------------------------------------------------------
# BERT students: cut from teacher layers, optionally narrowed


def pick_teacher_layers(num_teacher_layers: int, layers) -> list[int]:
    """`layers` is a count (keep the bottom N layers, which Sajjad et al. found to lose least
    when cutting a fine-tuned BERT) or an explicit list of teacher layer indices."""
    if isinstance(layers, int):
        if not 1 <= layers <= num_teacher_layers:
            raise ValueError(f"distill: layers={layers} must be between 1 and the teacher's {num_teacher_layers}")
        return list(range(layers))
    chosen = [int(i) for i in layers]
    if not chosen or any(not 0 <= i < num_teacher_layers for i in chosen):
        raise ValueError(f"distill: layers={chosen} must be indices of the teacher's {num_teacher_layers} layers")
    return chosen


def student_from_teacher(teacher: TextClassifier, teacher_layers: list[int]) -> TextClassifier:
    """A shallower copy of the teacher: same embeddings and head, the chosen layers in order.
    Before training it computes exactly what those teacher layers compute."""
    config = replace(teacher.config, num_layers=len(teacher_layers),
                     layer_heads=[teacher.config.layer_heads[i] for i in teacher_layers],
                     layer_ffn=[teacher.config.layer_ffn[i] for i in teacher_layers])
    student = TextClassifier(config)
    student.embeddings.load_state_dict(teacher.embeddings.state_dict())
    student.classifier.load_state_dict(teacher.classifier.state_dict())
    for target, source in zip(student.encoder.layer, teacher_layers):
        target.load_state_dict(teacher.encoder.layer[source].state_dict())
    return student


@torch.no_grad()
def hidden_basis(model: TextClassifier, split, width: int, batches: int = 32, seed: int = 0) -> tuple[torch.Tensor, float]:
    """(hidden, width) orthonormal columns spanning the top principal directions of the model's
    residual stream (every layer's output at real tokens, uncentred), and the share of the
    stream's energy they keep."""
    model.eval()
    d = model.config.hidden_size
    moment = torch.zeros(d, d, dtype=torch.float64)
    for index in length_bucketed_batches([len(x) for x in split.input_ids], 32, shuffle=True, seed=seed)[:batches]:
        ids, mask = pad_batch([split.input_ids[i] for i in index])
        for h in model.hidden_states(ids, mask):
            real = h[mask.bool()].double()
            moment += real.T @ real
    values, vectors = torch.linalg.eigh(moment)  # ascending eigenvalues
    return vectors[:, -width:].flip(-1).to(torch.float32), float(values[-width:].sum() / values.sum())


def project_width(model: TextClassifier, basis: torch.Tensor, energy: float = 1.0) -> TextClassifier:
    """A model whose residual stream is the original's carried in `basis` coordinates: weights
    that read it are multiplied by the basis, weights that write it by its transpose, and
    LayerNorm scales are averaged over it and rescaled by √(energy·hidden/width), since a
    LayerNorm over fewer coordinates would otherwise output a projection of the wrong length.
    Heads keep their size; their count must already fit (see narrow_student). Exact for a
    permutation of the coordinates; an initialisation otherwise."""
    config = model.config
    if config.low_rank or config.embedding_size or config.shared_layers:
        raise ValueError("distill: width narrows a plain encoder; put distill before sharing and decomposition steps")
    d, width = basis.shape
    narrow = TextClassifier(replace(config, hidden_size=width, num_heads=width // config.head_dim))
    reads = ("query.weight", "key.weight", "value.weight", "intermediate.dense.weight", "classifier.weight",
             "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight")
    state, norm_scale = {}, (energy * d / width) ** 0.5
    for key, t in model.state_dict().items():
        if key.endswith("LayerNorm.weight"):
            t = (basis * basis).T @ t * norm_scale
        elif key.endswith("LayerNorm.bias") or key.endswith("output.dense.bias"):
            t = basis.T @ t
        elif key.endswith("output.dense.weight"):
            t = basis.T @ t
        elif key.endswith(reads):
            t = t @ basis
        state[key] = t.contiguous()
    narrow.load_state_dict(state)
    return narrow


def narrow_student(student: TextClassifier, ctx, width: int, ffn: int) -> tuple[TextClassifier, torch.Tensor | None, dict]:
    """Keep the `width / head_dim` most important heads and the `ffn` most important neurons of
    every layer (gradient importance, as structured pruning scores them), then project the
    residual stream to `width`. Returns (student, basis or None, details)."""
    from textcompress.techniques.pruning import gate_importance, remove_heads_and_neurons

    config, d = student.config, student.config.head_dim
    width = width or config.hidden_size
    if width % d or not d <= width <= config.hidden_size:
        raise ValueError(f"distill: width={width} must be a multiple of the head size {d}, at most {config.hidden_size}")
    if ffn > max(config.layer_ffn):
        raise ValueError(f"distill: ffn={ffn} is wider than the teacher's {max(config.layer_ffn)}")
    heads, neurons = gate_importance(student, ctx.train, ctx.teacher_logits, batches=32, seed=ctx.seed)
    keep_heads = [sorted(s.argsort(descending=True)[: min(len(s), width // d)].tolist()) for s in heads]
    keep_neurons = [sorted(s.argsort(descending=True)[: ffn or len(s)].tolist()) for s in neurons]
    student = remove_heads_and_neurons(student, keep_heads, keep_neurons)
    details = {"width": width, "layer_heads": student.config.layer_heads, "layer_ffn": student.config.layer_ffn}
    if width == config.hidden_size:
        return student, None, details
    basis, energy = hidden_basis(student, ctx.train, width, seed=ctx.seed)
    details["energy_kept"] = round(energy, 4)
    return project_width(student, basis, energy), basis, details


# ---------------------------------------------------------------------------
# Recurrent and convolutional students


def embedding_table(teacher: nn.Module, size: int) -> torch.Tensor:
    """The teacher's word-piece vectors (a transformer's or a recurrent model's), projected onto
    their top `size` principal directions when `size` is smaller than their width."""
    from textcompress.modeling_rnn import principal_projection

    table = word_embeddings(teacher).weight.detach()
    if isinstance(teacher, TextClassifier) and teacher.embeddings.word_projection is not None:
        table = teacher.embeddings.word_projection(table).detach()
    if size > table.shape[1]:
        raise ValueError(f"distill: embedding_size={size} is wider than the teacher's {table.shape[1]}")
    return principal_projection(table, size)


def word_level_student(teacher: nn.Module, args: dict) -> nn.Module:
    """A BiLSTM/GRU (Tang et al.) or Kim CNN on the teacher's word pieces."""
    size = args["embedding_size"] or embedding_table(teacher, 0).shape[1]
    common = {"vocab_size": teacher.config.vocab_size, "embedding_size": size, "num_labels": teacher.config.num_labels,
              "dropout": args["dropout"]}
    if args["student"] == "cnn":
        from textcompress.modeling_cnn import ConvClassifier, ConvConfig
        student = ConvClassifier(ConvConfig(filters=args["filters"], kernel_sizes=args["kernel_sizes"], **common))
    else:
        from textcompress.modeling_rnn import RecurrentClassifier, RecurrentConfig
        if not isinstance(args["layers"], int):
            raise ValueError(f"distill: layers={args['layers']} must be a count of recurrent layers for student {args['student']}")
        student = RecurrentClassifier(RecurrentConfig(
            hidden_size=args["hidden_size"], cell=args["student"], num_layers=args["layers"],
            bidirectional=args["bidirectional"], pooling=args["pooling"], head_size=args["head_size"], **common))
    student.word_embeddings.weight.data.copy_(embedding_table(teacher, size))
    return student


# ---------------------------------------------------------------------------
# Training


def word_embeddings(model: nn.Module) -> nn.Embedding:
    return model.embeddings.word_embeddings if isinstance(model, TextClassifier) else model.word_embeddings


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
            loss_module=loss_module)
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
    import json

    from textcompress.data import Split
    from textcompress.techniques.augmentation import augmented_split
    from textcompress.training import predict_logits

    vocab = json.loads(Path(ctx.tokenizer_file).read_text())["model"]["vocab"]
    extra = augmented_split(ctx.train, multiplier, vocab.get("[MASK]", vocab.get("[UNK]", 0)), ctx.seed)
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


def apply_distill(model: TextClassifier, args: dict, ctx) -> tuple[nn.Module, dict]:
    basis, layer_map = None, args["layer_map"] or None
    if args["student"] == "same":
        student, details = copy.deepcopy(model), {"student": "same (recovery)"}
    elif args["student"] == "bert":
        used = pick_teacher_layers(model.config.num_layers, args["layers"])
        student = student_from_teacher(model, used)
        details = {"student": "bert", "teacher_layers": used, "layers": len(used)}
        if args["width"] or args["ffn"]:
            student, basis, details["narrowed"] = narrow_student(student, ctx, args["width"], args["ffn"])
        layer_map = layer_map or used
    else:
        # Its embedding starts from the current model's word pieces (a trimmed vocabulary stays trimmed).
        student = word_level_student(model, args)
        details = {"student": args["student"], "config": dict(vars(student.config))}
    if layer_map and (len(layer_map) != student.config.num_layers or not all(0 <= j < ctx.teacher.config.num_layers for j in layer_map)):
        raise ValueError(f"distill: layer_map {layer_map} must name a teacher layer for each of the student's "
                         f"{student.config.num_layers} layers")
    details["params_before"] = count_parameters(model)
    details["params_after"] = count_parameters(student)
    if args["logit_loss"] != "kl":
        details["logit_loss"] = args["logit_loss"]
    if args["hidden_weight"] or args["attention_weight"]:
        details["losses"] = {"hidden_weight": args["hidden_weight"], "attention_weight": args["attention_weight"],
                             "layer_map": layer_map or default_layer_map(student.config.num_layers, ctx.teacher.config.num_layers)}
    if args["augment"]:
        rows = len(ctx.train)
        ctx = with_augmented_data(ctx, args["augment"])
        details["augmented_rows"] = len(ctx.train) - rows
    details["history"] = recover(student, ctx, args, desc="distill", layer_map=layer_map, projection_init=basis)
    return student, details
