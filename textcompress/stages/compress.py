"""Stage `compress@<candidate>`: apply the candidate's PyTorch-level recipe steps to the teacher.
ONNX-level steps (quantization) run later, in `export`."""

import tempfile
from pathlib import Path

import numpy as np

from textcompress import catalog
from textcompress.data import load_split
from textcompress.fileio import atomic_dir, write_json
from textcompress.models.encoder import count_parameters, load_bundle, save_bundle
from textcompress.stages import run_stage
from textcompress.techniques import TechniqueContext, candidate_recipe
from textcompress.techniques.prefix_store import PREFIXES, PrefixStore, run_steps, shared_lengths
from textcompress.training import accuracy, predict_logits, seed_everything


def main(argv=None):
    """Writes the candidate's model bundle and `steps.json` (each step's arguments and details, and
    whether it was computed or loaded from the prefix store; the recipe's families, parameters,
    PyTorch validation accuracy) to --out."""
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
            model, steps = run_steps(recipe.compress_steps, teacher, ctx, store, shared, args.candidate)
            summary = {"candidate": args.candidate, "recipe": recipe.as_params(), "families": recipe.families, "steps": steps,
                       "params": count_parameters(model),
                       "torch_validation_accuracy": accuracy(predict_logits(model, ctx.validation), ctx.validation.labels)}
            with atomic_dir(args.out) as tmp:
                save_bundle(model, tmp, ctx.tokenizer_file, labels)
                write_json(tmp / "steps.json", summary)
        print(f"{args.candidate}: {summary['params']:,} parameters, PyTorch validation accuracy {summary['torch_validation_accuracy']:.4f}")

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
