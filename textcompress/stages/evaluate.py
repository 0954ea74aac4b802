"""Stage `evaluate@<candidate>`: quality of the exported model on validation (and test, if given)."""

from pathlib import Path

from textcompress import catalog
from textcompress.data import load_labels, load_split
from textcompress.decisions.evaluation import evaluate_predictions
from textcompress.fileio import write_json
from textcompress.deploy.inference import MODEL_FILE, make_session, split_for_model, split_logits
from textcompress.stages import run_stage


def main(argv=None):
    """Writes the exported candidate's accuracy, macro-F1, bootstrap interval, agreement with the
    teacher, accuracy drop against the teacher (`accuracy_drop`, a fraction) with its paired bootstrap
    upper bound (`accuracy_drop_upper`, at evaluate.bound_level; `bound_level`) per split, and its
    predictions to --out."""
    def add(parser):
        parser.add_argument("candidate")
        parser.add_argument("--prepared", default=str(catalog.PREPARED))
        parser.add_argument("--onnx", required=True)
        parser.add_argument("--teacher-onnx", required=True)
        parser.add_argument("--out", required=True)

    def body(params, args):
        prepared = Path(args.prepared)
        num_classes = len(load_labels(prepared))
        metrics = {"candidate": args.candidate, "bound_level": params["evaluate"]["bound_level"]}
        candidate = make_session(Path(args.onnx) / MODEL_FILE)
        teacher = make_session(Path(args.teacher_onnx) / MODEL_FILE)
        for split_name in ("validation", "test", "selection"):
            if not (prepared / f"{split_name}.parquet").is_file():
                continue
            split = load_split(prepared, split_name)
            max_length = params["data"]["max_length"]
            predicted = split_logits(candidate, split_for_model(split, prepared, args.onnx, max_length)).argmax(-1)
            reference = split_logits(teacher, split_for_model(split, prepared, args.teacher_onnx, max_length)).argmax(-1)
            result = evaluate_predictions(predicted, split.labels, num_classes, reference, params["evaluate"]["bootstrap"],
                                          params["evaluate"]["bound_level"])
            if split_name == "validation":
                metrics.update(result)
                metrics["predictions"] = predicted.astype(int).tolist()  # for paired tests at promotion
            else:
                metrics[split_name] = result
        write_json(args.out, metrics)
        print(f"{args.candidate}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, "
              f"agreement with teacher {metrics['label_agreement']:.4f}")

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
