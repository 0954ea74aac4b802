"""Stage `report`: candidates.json/.md, pareto.png and summary.json from this run's results."""

from pathlib import Path

from textcompress.data import load_labels
from textcompress.fileio import data_version, read_json
from textcompress.report import build_report, write_report
from textcompress.stages import run_stage

FAILURES_FILE = "failures.json"  # written by the flow when a candidate's stage failed


def card_context(params: dict, prepared: Path) -> dict:
    return {"data_version": data_version(Path(".")), "base_model": params["base_model"],
            "max_length": params["data"]["max_length"], "labels": load_labels(prepared)}


def main(argv=None):
    def add(parser):
        parser.add_argument("--artifacts", default="artifacts")
        parser.add_argument("--benchmark", default="reports/benchmark.json")
        parser.add_argument("--attention-benchmark", default="reports/attention_benchmark.json")
        parser.add_argument("--out", default="reports")

    def body(params, args):
        root, out = Path(args.artifacts), Path(args.out)
        failures = read_json(out / FAILURES_FILE) if (out / FAILURES_FILE).is_file() else {}
        report = build_report(params["candidates"], root / "compressed", root / "onnx", root / "metrics",
                              read_json(args.benchmark), params["promotion"], failures)
        if Path(args.attention_benchmark).is_file():
            report["attention_benchmark"] = read_json(args.attention_benchmark)
        write_report(report, out, card_context(params, root / "prepared"))
        print((out / "candidates.md").read_text())

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
