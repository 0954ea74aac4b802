"""Stage `compress@<candidate>`: apply the candidate's PyTorch-level recipe steps to the teacher.
ONNX-level steps (quantization) run later, in `export`."""

import os
import tempfile
from pathlib import Path

import numpy as np

from textcompress import catalog
from textcompress.data import load_split, load_tokenizer, retokenized
from textcompress.errors import STOP_BELOW_ENV, StoppedEarly, TextcompressError
from textcompress.fileio import atomic_dir, write_json
from textcompress.models.encoder import count_parameters, load_bundle, save_bundle
from textcompress.stages import run_stage
from textcompress.techniques import TechniqueContext, candidate_recipe
from textcompress.techniques.prefix_store import PREFIXES, PrefixStore, run_steps, shared_lengths
from textcompress.training import accuracy, predict_logits, seed_everything


def main(argv=None):
    """Writes the candidate's model bundle and `steps.json` (each step's arguments and details, and
    whether it was computed or loaded from the prefix store; the recipe's families, parameters,
    PyTorch validation accuracy) to --out. With $TEXTCOMPRESS_STOP_BELOW set (a search trial), it
    stops after the first training step when the selection accuracy is below it (StoppedEarly),
    writing nothing."""
    def add(parser):
        parser.add_argument("candidate")
        parser.add_argument("--prepared", default=str(catalog.PREPARED))
        parser.add_argument("--teacher", default=str(catalog.TEACHER))
        parser.add_argument("--logits", default=str(catalog.TEACHER_LOGITS))
        parser.add_argument("--out", required=True)

    def body(params, args):
        recipe = candidate_recipe(params, args.candidate)
        seed = recipe.trained_seed(params["seed"])  # a candidate written as {seed, steps} trains with its own
        teacher, labels = load_bundle(args.teacher)
        prepared = Path(args.prepared)
        with tempfile.TemporaryDirectory() as workdir:
            ctx = TechniqueContext(teacher, load_split(prepared, "train"), load_split(prepared, "validation"),
                                   np.load(args.logits), seed, params["runtime"]["device"],
                                   prepared / "tokenizer.json", params["data"]["max_length"], Path(workdir),
                                   Path(params["runtime"]["cache_dir"]).expanduser(), params["runtime"]["precision"])
            # Shared with another candidate: computed once, in the prefix store (techniques/prefix_store.py).
            # Only candidates trained with the same seed can share a prefix (the store's key holds the seed too).
            others = [other.compress_steps for other in (candidate_recipe(params, name) for name in params["candidates"]
                                                          if name != args.candidate)
                      if other.trained_seed(params["seed"]) == seed]
            shared = shared_lengths(recipe.compress_steps, others)
            store = PrefixStore(ctx.cache_dir / PREFIXES, Path(args.teacher), prepared, Path(args.logits), ctx) if shared else None
            # What a step draws before seeding itself (a GRU student's initial weights) comes from the
            # seed, not from the process's random start; the store restores the state after each prefix.
            seed_everything(seed)
            check = early_stop(recipe, prepared, ctx)
            model, steps = run_steps(recipe.compress_steps, teacher, ctx, store, shared, args.candidate, check)
            summary = {"candidate": args.candidate, "recipe": recipe.as_params(), "families": recipe.families, "steps": steps,
                       "params": count_parameters(model),
                       "torch_validation_accuracy": accuracy(predict_logits(model, ctx.validation), ctx.validation.labels)}
            with atomic_dir(args.out) as tmp:
                save_bundle(model, tmp, ctx.tokenizer_file, labels)
                write_json(tmp / "steps.json", summary)
        print(f"{args.candidate}: {summary['params']:,} parameters, PyTorch validation accuracy {summary['torch_validation_accuracy']:.4f}")

    run_stage(__doc__, add, body, argv)


def stop_below() -> float | None:
    """$TEXTCOMPRESS_STOP_BELOW as an accuracy fraction, or None when it is unset (a normal run)."""
    raw = os.environ.get(STOP_BELOW_ENV, "").strip()
    if not raw:
        return None
    try:
        threshold = float(raw)
    except ValueError:
        threshold = float("nan")
    if not 0 <= threshold <= 1:  # nan fails too
        raise TextcompressError(f"{STOP_BELOW_ENV}={raw!r}: must be an accuracy fraction from 0 to 1. "
                                f"Fix: set it to e.g. 0.80, or unset it to turn early stopping off")
    return threshold


def early_stop(recipe, prepared: Path, ctx):
    """With $TEXTCOMPRESS_STOP_BELOW set (a search trial), the check `run_steps` calls after the
    recipe's first training step: the PyTorch model's accuracy on the selection split, and
    StoppedEarly when it is below the threshold. None when early stopping is off or nothing trains."""
    threshold = stop_below()
    # The first step that trains (trim_vocab, or a step with epochs: 0, only reshapes the teacher).
    first_training = next((i + 1 for i, s in enumerate(recipe.compress_steps) if s.args.get("epochs", 0)), None)
    if threshold is None or first_training is None:
        return None
    if not (prepared / "selection.parquet").is_file():
        raise TextcompressError(f"{prepared}: early stopping ({STOP_BELOW_ENV}) measures the selection split, and "
                                "there is none. Fix: set data.selection_fraction > 0 in params.yaml (e.g. 0.05), "
                                f"or unset {STOP_BELOW_ENV}")
    selection = load_split(prepared, "selection")
    prepared_tokenizer = (prepared / "tokenizer.json").read_bytes()

    measured_once = False

    def check(done: int, model, ctx) -> None:
        nonlocal measured_once
        if measured_once or done < first_training:  # once, after the first training step (or a stored prefix holding it)
            return
        measured_once = True
        rows = selection
        if Path(ctx.tokenizer_file).read_bytes() != prepared_tokenizer:  # a trimmed vocabulary, a student's own
            rows = retokenized(selection, load_tokenizer(ctx.tokenizer_file, ctx.max_length))
        measured = accuracy(predict_logits(model, rows, device=ctx.device), rows.labels)
        print(f"early stopping: selection accuracy {measured:.4f} after {done} step(s), threshold {threshold:.4f}")
        if measured < threshold:
            last = recipe.compress_steps[done - 1].position
            raise StoppedEarly(measured, threshold, [s.name for s in recipe.steps if s.position > last])  # ONNX-level ones too

    return check


if __name__ == "__main__":
    main()
