"""Stage `teacher_logits`: the teacher's logits on the training set, computed once and reused
by every distillation-based candidate."""

import numpy as np

from textcompress.data import load_split
from textcompress.fileio import atomic_path
from textcompress.modeling import load_bundle
from textcompress.stages import run_stage
from textcompress.training import predict_logits


def main(argv=None):
    def add(parser):
        parser.add_argument("--prepared", default="artifacts/prepared")
        parser.add_argument("--teacher", default="artifacts/teacher")
        parser.add_argument("--out", default="artifacts/teacher_logits.npy")

    def body(params, args):
        model, _ = load_bundle(args.teacher)
        logits = predict_logits(model, load_split(args.prepared, "train"), desc="teacher logits",
                                device=params["runtime"]["device"])
        with atomic_path(args.out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, logits)
        print(f"teacher logits: {logits.shape[0]} rows")

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
