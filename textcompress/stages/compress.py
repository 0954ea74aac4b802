"""Stage `compress@<candidate>`: apply the candidate's PyTorch-level recipe steps to the teacher.
ONNX-level steps (quantization) run later, in `export`."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textcompress.data import Split, load_split
from textcompress.errors import TextcompressError
from textcompress.fileio import atomic_dir, write_json
from textcompress.modeling import TextClassifier, count_parameters, load_bundle, save_bundle
from textcompress.stages import run_stage
from textcompress.techniques import parse_step, recipe_families
from textcompress.training import accuracy, predict_logits


@dataclass
class CompressContext:
    """What a technique may use besides the model it transforms."""
    teacher: TextClassifier
    train: Split
    validation: Split
    teacher_logits: np.ndarray
    seed: int
    device: str = "cpu"
    tokenizer_file: Path | None = None  # the model's tokenizer; a vocabulary step replaces it
    max_length: int = 128
    workdir: Path | None = None  # scratch space for files a step makes (a trimmed tokenizer)
    cache_dir: Path | None = None  # teacher hidden states shared by candidates (None: not cached)


def candidate_recipe(params: dict, name: str) -> list:
    if name not in params["candidates"]:
        raise TextcompressError(f"params.yaml: no candidate named {name!r}. Fix: use one of {sorted(params['candidates'])}")
    return params["candidates"][name]


def main(argv=None):
    def add(parser):
        parser.add_argument("candidate")
        parser.add_argument("--prepared", default="artifacts/prepared")
        parser.add_argument("--teacher", default="artifacts/teacher")
        parser.add_argument("--logits", default="artifacts/teacher_logits.npy")
        parser.add_argument("--out", required=True)

    def body(params, args):
        recipe = candidate_recipe(params, args.candidate)
        teacher, labels = load_bundle(args.teacher)
        prepared = Path(args.prepared)
        with tempfile.TemporaryDirectory() as workdir:
            ctx = CompressContext(teacher, load_split(prepared, "train"), load_split(prepared, "validation"),
                                  np.load(args.logits), params["seed"], params["runtime"]["device"],
                                  prepared / "tokenizer.json", params["data"]["max_length"], Path(workdir),
                                  Path(params["runtime"]["cache_dir"]).expanduser())
            model, steps = teacher, []
            for step in recipe:
                technique, step_args = parse_step(step)
                if technique.stage != "compress":
                    continue
                print(f"{args.candidate}: {technique.name} {step_args}")
                model, details = technique.apply_fn()(model, step_args, ctx)
                steps.append({"technique": technique.name, "family": technique.family, "args": step_args, "details": details})
            summary = {"candidate": args.candidate, "recipe": recipe, "families": recipe_families(recipe), "steps": steps,
                       "params": count_parameters(model),
                       "torch_validation_accuracy": accuracy(predict_logits(model, ctx.validation), ctx.validation.labels)}
            with atomic_dir(args.out) as tmp:
                save_bundle(model, tmp, ctx.tokenizer_file, labels)
                write_json(tmp / "steps.json", summary)
        print(f"{args.candidate}: {summary['params']:,} parameters, PyTorch validation accuracy {summary['torch_validation_accuracy']:.4f}")

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
