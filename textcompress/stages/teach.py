"""Stage `teach`: fine-tune the pretrained base into the teacher (or adopt a fine-tuned one), or
train an LSTM/GRU teacher on the base's word pieces (`teach.architecture`).

With `runtime.processes: N` it runs itself under torchrun with N processes (one per GPU, or
CPU processes sharing the cores over gloo); process 0 writes the outputs."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from textcompress import catalog
from textcompress.data import holds_pairs, load_labels, load_split, pair_separator
from textcompress.errors import TextcompressError
from textcompress.fileio import atomic_dir, write_json
from textcompress.models.checkpoints import from_pretrained, load_teacher, resolve_base
from textcompress.models.encoder import load_bundle, save_bundle
from textcompress.models.recurrent import RecurrentClassifier, RecurrentConfig, principal_projection
from textcompress.stages import run_stage
from textcompress.training import (
    Checkpoint, accuracy, join_process_group, predict_logits, process_group, resolve_device, seed_everything,
    train_classifier,
)


def recurrent_teacher(params: dict, num_labels: int) -> RecurrentClassifier:
    """An untrained LSTM/GRU classifier over the base's word pieces; with `embeddings: base` its
    embedding starts from the base's table (projected onto its principal directions if narrower)."""
    teach, rnn = params["teach"], params["teach"]["recurrent"]
    table = from_pretrained(resolve_base(params["base_model"]), num_labels).embeddings.word_embeddings.weight.detach()
    model = RecurrentClassifier(RecurrentConfig(
        vocab_size=table.shape[0], embedding_size=rnn["embedding_size"] or table.shape[1], hidden_size=rnn["hidden_size"],
        cell=teach["architecture"], num_layers=rnn["layers"], bidirectional=rnn["bidirectional"], pooling=rnn["pooling"],
        head_size=rnn["head_size"], dropout=rnn["dropout"], num_labels=num_labels))
    if rnn["embeddings"] == "base":
        model.word_embeddings.weight.data.copy_(principal_projection(table, model.config.embedding_size))
    return model


def base_classifier(params: dict, labels: list, separator: int | None):
    """The base checkpoint as a classifier to fine-tune: a fresh head, or, for a fine-tuned
    classifier whose labels match the data's, its own head (fine-tuned further)."""
    return load_teacher(resolve_base(params["base_model"]), labels, params["teach"]["pooling"], separator)


def adopted_teacher(source: str, labels: list, separator: int | None):
    """`teach.finetuned_teacher` as it is: a textcompress bundle, or a fine-tuned Hugging Face
    classifier whose outputs are put in the data's label order."""
    folder = resolve_base(source)
    if (folder / "labels.json").is_file():  # a bundle written by `teach` or `compress`
        model, teacher_labels = load_bundle(folder)
        if teacher_labels != labels:
            raise TextcompressError(f"{folder}: its labels {teacher_labels} differ from the data's {labels}. "
                                    "Fix: use a teacher trained on these labels, or unset teach.finetuned_teacher")
        return model
    return load_teacher(folder, labels, separator=separator, adopt=True).eval()


def run_key(params: dict, train) -> str:
    """What the teacher's training depends on (settings, seed, base, rows): a checkpoint from
    another run is never resumed."""
    digest = hashlib.sha256(json.dumps([params["teach"], params["seed"], params["base_model"]], sort_keys=True).encode())
    digest.update(np.concatenate(train.input_ids).astype(np.int64).tobytes())
    digest.update(np.asarray(train.labels).astype(np.int64).tobytes())
    return digest.hexdigest()[:20]


def main(argv=None):
    """Writes the teacher bundle to --out (fine-tuned, trained, or a fine-tuned classifier taken as it
    is) and its training curve to --metrics, resuming from --checkpoint when one matches."""
    def add(parser):
        parser.add_argument("--prepared", default=str(catalog.PREPARED))
        parser.add_argument("--out", default=str(catalog.TEACHER))
        parser.add_argument("--metrics", default=str(catalog.TEACHER_METRICS))
        parser.add_argument("--checkpoint", default=str(catalog.CHECKPOINTS / "teach.pt"),
                            help="saved every runtime.checkpoint_every steps; a killed run resumes from it")

    def body(params, args):
        processes = params["runtime"]["processes"]
        if processes > 1 and "LOCAL_RANK" not in os.environ:  # start the processes: this one only waits
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                       "-m", "textcompress.stages.teach", *(sys.argv[1:] if argv is None else argv)]
            sys.exit(subprocess.run(command).returncode)
        cfg, prepared = params["teach"], Path(args.prepared)
        labels, validation = load_labels(prepared), load_split(prepared, "validation")
        started, device = time.time(), join_process_group(params["runtime"]["device"])
        separator = pair_separator(prepared / "tokenizer.json") if holds_pairs(prepared) else None
        if cfg["finetuned_teacher"]:
            model, history, metrics_device = adopted_teacher(cfg["finetuned_teacher"], labels, separator), [], "none"
        else:
            seed_everything(params["seed"])
            if cfg["architecture"] == "transformer":
                model = base_classifier(params, labels, separator)
            else:
                model = recurrent_teacher(params, len(labels))
            train, every = load_split(prepared, "train"), params["runtime"]["checkpoint_every"]
            checkpoint = Checkpoint(args.checkpoint, every, run_key(params, train)) if every else None
            history = train_classifier(
                model, train, epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"],
                warmup=cfg["warmup"], weight_decay=cfg["weight_decay"], seed=params["seed"], validation=validation,
                desc="teach", device=device, checkpoint=checkpoint, precision=params["runtime"]["precision"])
            metrics_device = str(resolve_device(device))
        rank, processes = process_group()
        if rank != 0:
            return
        metrics = {"validation_accuracy": accuracy(predict_logits(model, validation, device=device), validation.labels),
                   "seconds": round(time.time() - started, 1), "device": metrics_device, "history": history,
                   "processes": processes}
        with atomic_dir(args.out) as tmp:
            save_bundle(model, tmp, prepared / "tokenizer.json", labels)
        write_json(args.metrics, metrics)
        print(f"teacher validation accuracy {metrics['validation_accuracy']:.4f} ({metrics['seconds']} s)")

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
