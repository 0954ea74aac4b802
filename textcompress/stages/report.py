"""Stage `report`: candidates.json/.md, pareto.png and summary.json from this run's results."""

from pathlib import Path

from textcompress import catalog
from textcompress.data import load_labels, skipped_rows
from textcompress.fileio import data_version, read_json
from textcompress.decisions.report import build_report, write_report
from textcompress.stages import run_stage

FAILURES_FILE = catalog.FAILURES.name  # written by the flow: candidate -> why its stage failed


def card_context(params: dict, prepared: Path) -> dict:
    adopted = params["teach"]["finetuned_teacher"]
    teacher = f"the fine-tuned classifier `{adopted}`, taken as it is" if adopted else \
        f"a text classifier fine-tuned from `{params['base_model']}`"
    return {"data_version": data_version(Path(".")), "base_model": params["base_model"], "teacher": teacher,
            "pairs": params["data"]["text_pair_column"] is not None,
            "max_length": params["data"]["max_length"], "labels": load_labels(prepared)}


def main(argv=None):
    """Writes candidates.json/.md, model_card.md, summary.json and pareto.png to --out."""
    def add(parser):
        parser.add_argument("--artifacts", default=str(catalog.ARTIFACTS))
        parser.add_argument("--benchmark", default=str(catalog.BENCHMARK))
        parser.add_argument("--attention-benchmark", default=str(catalog.ATTENTION_BENCHMARK))
        parser.add_argument("--out", default=str(catalog.REPORTS))

    def body(params, args):
        root, out = Path(args.artifacts), Path(args.out)
        failures = read_json(out / FAILURES_FILE) if (out / FAILURES_FILE).is_file() else {}
        report = build_report(params["candidates"], root / catalog.COMPRESSED.name, root / catalog.ONNX.name,
                              root / catalog.METRICS.name, read_json(args.benchmark), params["promotion"], failures)
        report["skipped_rows"] = skipped_rows(root / catalog.PREPARED.name)  # named in candidates.md
        if Path(args.attention_benchmark).is_file():
            report["attention_benchmark"] = read_json(args.attention_benchmark)
        write_report(report, out, card_context(params, root / catalog.PREPARED.name))
        print((out / catalog.CANDIDATES_MD.name).read_text())

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
