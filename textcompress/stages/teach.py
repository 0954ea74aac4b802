"""Stage `teach`: fine-tune the pretrained base into the teacher (or adopt a fine-tuned one), or
train an LSTM/GRU teacher on the base's word pieces (`teach.architecture`)."""

import time
from pathlib import Path

from textcompress.data import load_labels, load_split
from textcompress.fileio import atomic_dir, write_json
from textcompress.modeling import from_pretrained_bert, load_bundle, resolve_base, save_bundle
from textcompress.modeling_rnn import RecurrentClassifier, RecurrentConfig, principal_projection
from textcompress.stages import run_stage
from textcompress.training import accuracy, predict_logits, resolve_device, seed_everything, train_classifier


def recurrent_teacher(params: dict, num_labels: int) -> RecurrentClassifier:
    """An untrained LSTM/GRU classifier over the base's word pieces; with `embeddings: base` its
    embedding starts from the base's table (projected onto its principal directions if narrower)."""
    teach, rnn = params["teach"], params["teach"]["recurrent"]
    table = from_pretrained_bert(resolve_base(params["base_model"]), num_labels).embeddings.word_embeddings.weight.detach()
    model = RecurrentClassifier(RecurrentConfig(
        vocab_size=table.shape[0], embedding_size=rnn["embedding_size"] or table.shape[1], hidden_size=rnn["hidden_size"],
        cell=teach["architecture"], num_layers=rnn["layers"], bidirectional=rnn["bidirectional"], pooling=rnn["pooling"],
        head_size=rnn["head_size"], dropout=rnn["dropout"], num_labels=num_labels))
    if rnn["embeddings"] == "base":
        model.word_embeddings.weight.data.copy_(principal_projection(table, model.config.embedding_size))
    return model


def main(argv=None):
    def add(parser):
        parser.add_argument("--prepared", default="artifacts/prepared")
        parser.add_argument("--out", default="artifacts/teacher")
        parser.add_argument("--metrics", default="artifacts/teacher_metrics.json")

    def body(params, args):
        cfg, prepared = params["teach"], Path(args.prepared)
        labels, validation = load_labels(prepared), load_split(prepared, "validation")
        started, device = time.time(), params["runtime"]["device"]
        if cfg["finetuned_teacher"]:
            model, teacher_labels = load_bundle(cfg["finetuned_teacher"])
            if teacher_labels != labels:
                from textcompress.errors import TextcompressError
                raise TextcompressError(f"{cfg['finetuned_teacher']}: its labels {teacher_labels} differ from the data's "
                                        f"{labels}. Fix: use a teacher trained on these labels, or unset teach.finetuned_teacher")
            history, metrics_device = [], "none"
        else:
            seed_everything(params["seed"])
            if cfg["architecture"] == "transformer":
                model = from_pretrained_bert(resolve_base(params["base_model"]), len(labels), cfg["pooling"])
            else:
                model = recurrent_teacher(params, len(labels))
            history = train_classifier(
                model, load_split(prepared, "train"), epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"],
                warmup=cfg["warmup"], weight_decay=cfg["weight_decay"], seed=params["seed"], validation=validation,
                desc="teach", device=device)
            metrics_device = str(resolve_device(device))
        metrics = {"validation_accuracy": accuracy(predict_logits(model, validation, device=device), validation.labels),
                   "seconds": round(time.time() - started, 1), "device": metrics_device, "history": history}
        with atomic_dir(args.out) as tmp:
            save_bundle(model, tmp, prepared / "tokenizer.json", labels)
        write_json(args.metrics, metrics)
        print(f"teacher validation accuracy {metrics['validation_accuracy']:.4f} ({metrics['seconds']} s)")

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
