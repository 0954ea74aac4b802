"""ONNX Runtime inference over an exported candidate directory (model.onnx, tokenizer.json,
labels.json): the one place that builds sessions, so every stage runs models the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from textcompress.catalog import MODEL_FILE
from textcompress.data import Split, length_bucketed_batches, load_tokenizer, pad_arrays, retokenized


UNFUSED = ["SkipLayerNormFusion"]


def make_session(model_path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ONNX Runtime fuses residual Add + LayerNorm into SkipLayerNormalization, whose CPU kernel
    # measured 3.4x slower than the two ops it replaces (65 vs 19 us at 25 x 384, ORT 1.32, AVX2):
    # 10 % of a small int8 model's time. Every candidate, the teacher too, runs without it.
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=UNFUSED)


def run_logits(session: ort.InferenceSession, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    return session.run(["logits"], {"input_ids": input_ids, "attention_mask": attention_mask})[0]


def split_logits(session: ort.InferenceSession, split: Split, batch_size: int = 64) -> np.ndarray:
    """Logits for every row of `split`, in its order."""
    out = None
    for index in length_bucketed_batches([len(x) for x in split.input_ids], batch_size, shuffle=False):
        ids, mask = pad_arrays([split.input_ids[i] for i in index])
        logits = run_logits(session, ids, mask)
        if out is None:
            out = np.zeros((len(split), logits.shape[1]), dtype=np.float32)
        out[index] = logits
    return out


def split_for_model(split: Split, prepared_dir: str | Path, model_dir: str | Path, max_length: int) -> Split:
    """`split` tokenized the way the model in `model_dir` expects: as prepared, unless the model
    carries a tokenizer of its own (a trimmed vocabulary, a student base's), in which case its texts are
    tokenized again."""
    own, prepared = Path(model_dir) / "tokenizer.json", Path(prepared_dir) / "tokenizer.json"
    if not own.is_file() or own.read_bytes() == prepared.read_bytes():
        return split
    return retokenized(split, load_tokenizer(own, max_length))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class OnnxTextClassifier:
    """Raw text in, labels and probabilities out."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, max_length: int = 128):
        model_dir = Path(model_dir)
        self.session = make_session(model_dir / MODEL_FILE, threads)
        self.tokenizer = load_tokenizer(model_dir / "tokenizer.json", max_length)
        self.labels = json.loads((model_dir / "labels.json").read_text())
        self.max_length = max_length

    def predict(self, texts: list, batch_size: int = 32) -> tuple[list, np.ndarray]:
        """Returns (labels, probability of each predicted label)."""
        ids = [np.asarray(e.ids, dtype=np.int64) for e in self.tokenizer.encode_batch(list(texts))]
        split = Split(list(texts), ids, np.zeros(len(ids), dtype=np.int64))
        probs = softmax(split_logits(self.session, split, batch_size)) if ids else np.zeros((0, len(self.labels)))
        best = probs.argmax(axis=-1)
        return [self.labels[i] for i in best], probs[np.arange(len(best)), best]
