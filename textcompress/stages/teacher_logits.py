"""Stage `teacher_logits`: the teacher's logits on the training set, computed once and reused
by every distillation-based candidate."""

import numpy as np

from textcompress import catalog
from textcompress.data import load_split
from textcompress.fileio import atomic_path
from textcompress.models.encoder import load_bundle
from textcompress.stages import run_stage
from textcompress.training import predict_logits


def main(argv=None):
    """Writes the teacher's logits on the training set to --out, once for every distillation."""
    def add(parser):
        parser.add_argument("--prepared", default=str(catalog.PREPARED))
        parser.add_argument("--teacher", default=str(catalog.TEACHER))
        parser.add_argument("--out", default=str(catalog.TEACHER_LOGITS))

    def body(params, args):
        model, _ = load_bundle(args.teacher)
        # In the training precision: the logits are the students' targets, and bf16 halves this stage's time.
        logits = predict_logits(model, load_split(args.prepared, "train"), desc="teacher logits",
                                device=params["runtime"]["device"], precision=params["runtime"]["precision"])
        with atomic_path(args.out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, logits)
        print(f"teacher logits: {logits.shape[0]} rows")

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
