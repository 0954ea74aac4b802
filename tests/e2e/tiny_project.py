"""The tiny project the end-to-end tests run the real pipeline on."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import TINY_VOCAB, build_tiny_tokenizer, tiny_model_config, tiny_sentiment_rows, write_tiny_tsv

REPO = Path(__file__).resolve().parents[2]


def sh(*cmd, cwd):
    subprocess.run(list(cmd), cwd=cwd, check=True, capture_output=True, text=True)


def write_tiny_base(path: Path) -> Path:
    """A randomly initialised tiny BERT in Hugging Face's layout: config.json, model.safetensors, tokenizer.json."""
    import torch
    from safetensors.torch import save_file

    from textcompress.models.encoder import TextClassifier

    torch.manual_seed(0)
    config = tiny_model_config()
    model = TextClassifier(config)
    path.mkdir(parents=True)
    weights = {f"bert.{k}": v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    save_file(weights, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(TINY_VOCAB), "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers, "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size, "max_position_embeddings": config.max_position_embeddings}))
    build_tiny_tokenizer().save(str(path / "tokenizer.json"))
    return path


def write_hf_checkpoint(folder: Path, kind: str, classifier: bool = True, **overrides):
    """A random tiny checkpoint of `kind` (bert, roberta, xlm-roberta, distilbert, electra; deberta-v2 and
    modernbert, which run in transformers) built with
    transformers' own classes and saved by `save_pretrained`, with the tiny tokenizer beside it: a
    `*ForSequenceClassification`, or the bare encoder. Returns the transformers model."""
    import torch
    import transformers as hf

    names = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta", "distilbert": "DistilBert",
             "electra": "Electra", "deberta-v2": "DebertaV2", "modernbert": "ModernBert"}[kind]
    sizes = {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 48} if kind == "distilbert" else \
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48}
    extra = {"electra": {"embedding_size": 16}, "roberta": {"pad_token_id": 1}, "xlm-roberta": {"pad_token_id": 1},
             "deberta-v2": {"relative_attention": True, "position_buckets": 16, "pos_att_type": ["p2c", "c2p"],
                            "type_vocab_size": 0},
             "modernbert": {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3, "cls_token_id": 2, "sep_token_id": 3}}
    config = getattr(hf, f"{names}Config")(**{"vocab_size": len(TINY_VOCAB), "max_position_embeddings": 40,
                                              **sizes, **extra.get(kind, {}), **overrides})
    torch.manual_seed(0)
    model = getattr(hf, f"{names}ForSequenceClassification" if classifier else f"{names}Model")(config).eval()
    model.save_pretrained(folder)
    build_tiny_tokenizer().save(str(Path(folder) / "tokenizer.json"))
    return model


def build_tiny_project(root: Path, candidates: dict | None = None, sections: dict | None = None,
                       rows: tuple[list, list] | None = None, base: Path | None = None) -> Path:
    """A fresh git + DVC project holding this repo's pipeline, tiny data pushed to a temporary remote.
    `sections` updates params sections (e.g. {"teach": {"architecture": "lstm"}}); `rows` replaces
    the (train, validation) rows of the binary sentiment task; `base` replaces the tiny random BERT."""
    project, remote = root / "project", root / "remote"
    project.mkdir()
    for name in ("dvc.yaml",):
        shutil.copy(REPO / name, project / name)
    for package in ("textcompress", "flows", "tasks"):
        shutil.copytree(REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    train_rows, validation_rows = rows or (tiny_sentiment_rows(300, 1), tiny_sentiment_rows(60, 2))
    write_tiny_tsv(project / "data" / "train.tsv", train_rows)
    write_tiny_tsv(project / "data" / "validation.tsv", validation_rows)
    base = base or write_tiny_base(root / "tiny-bert")
    # The defaults, not params.yaml: `make run PARAMS=...` rewrites that file.
    from textcompress.config import DEFAULTS

    params = copy.deepcopy(DEFAULTS)
    params.update(base_model=str(base), seed=0)
    params["data"].update(train="data/train.tsv", validation="data/validation.tsv", max_length=32)
    params["teach"].update(epochs=3, lr=3e-3, batch_size=16)
    params["candidates"] = candidates or {  # the three candidates every run has, sized for a 2-layer model
        "teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}],
        "distill-l2": [{"distill": {"student": "bert", "layers": 1, "epochs": 3, "lr": 3e-3, "batch_size": 16}}]}
    # allow_noisy: a shared test machine is rarely quiet, and these tests are about the pipeline, not its timing.
    params["benchmark"].update(max_sentences=30, warmup=2, allow_noisy=True)
    params["evaluate"]["bootstrap"] = 100
    params["promotion"]["max_accuracy_drop"] = 5.0  # the tiny task is coarse: one validation row is 1.7 points
    params["pipeline"]["push_remote"] = "tmp"
    params["attention_benchmark"].update(lengths=[16, 64], repeats=1, linformer_length=8, performer_features=8)
    params["notify"].update(events=["failure", "promotion", "completion"], log_file="reports/notifications.jsonl")
    for section, values in (sections or {}).items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    git = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci"]
    sh("git", "init", "-q", cwd=project)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=project)
    # The project's own: DVC hashes the code folders stages depend on without Python's __pycache__,
    # whose files appear as modules get imported (a sweep workspace and the project would differ).
    shutil.copy(REPO / ".dvcignore", project / ".dvcignore")
    sh(sys.executable, "-m", "dvc", "remote", "add", "-d", "tmp", str(remote), cwd=project)
    sh(sys.executable, "-m", "dvc", "add", "-q", "data", cwd=project)
    sh(sys.executable, "-m", "dvc", "push", "-q", "data.dvc", cwd=project)
    shutil.rmtree(project / "data")  # the flow must bring it back from the remote
    sh(*git, "add", "-A", cwd=project)
    sh(*git, "commit", "-qm", "tiny project", cwd=project)
    return project
