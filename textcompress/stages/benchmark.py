"""Stage `benchmark`: time every exported candidate interleaved in one process, and say whether
the machine was quiet enough for the numbers to be trusted."""

import sys
from pathlib import Path

from textcompress import catalog
from textcompress.deploy.benchmark import benchmark_candidates
from textcompress.deploy.noise import verdict
from textcompress.data import load_split
from textcompress.errors import TextcompressError
from textcompress.fileio import write_json
from textcompress.catalog import MODEL_FILE, PARENT_FILE, PARENT_SUFFIX
from textcompress.stages import run_stage


def main(argv=None):
    """Writes every exported candidate's latency, throughput and peak memory, timed interleaved, to --out."""
    def add(parser):
        parser.add_argument("--prepared", default=str(catalog.PREPARED))
        parser.add_argument("--onnx-root", default=str(catalog.ONNX))
        parser.add_argument("--out", default=str(catalog.BENCHMARK))

    def body(params, args):
        cfg = params["benchmark"]
        present = {n: Path(args.onnx_root) / n for n in params["candidates"] if (Path(args.onnx_root) / n / MODEL_FILE).is_file()}
        if not present:
            raise TextcompressError(f"{args.onnx_root}: no exported candidate to benchmark. Fix: run the export stages first")
        texts = load_split(args.prepared, "validation").texts[: cfg["max_sentences"] or None]
        # A quantized candidate's fp32 parent is timed beside it: the guardrail needs both from one run.
        parents = {f"{n}{PARENT_SUFFIX}": d for n, d in present.items() if (d / PARENT_FILE).is_file()}
        result = benchmark_candidates({**present, **parents}, texts, cfg["threads"], cfg["warmup"], cfg["batch_size"],
                                      params["data"]["max_length"], model_files={n: PARENT_FILE for n in parents})
        result["missing"] = sorted(set(params["candidates"]) - set(present))
        result["noise"] = verdict(result, cfg)
        write_json(args.out, result)
        for name, row in result["candidates"].items():
            print(f"{name:>24}: p50 {row['latency_p50_ms']:.2f} ms, p95 {row['latency_p95_ms']:.2f} ms, "
                  f"{row['throughput_per_s']:.0f}/s at batch {cfg['batch_size']}, peak RSS {row['peak_rss_mb']:.0f} MB")
        if result["noise"]["noisy"]:
            sys.stdout.flush()  # the table first: the flow shows both streams in one
            print(f"warning: noisy benchmark, its latencies and ratios may not hold on a quiet machine: "
                  f"{'; '.join(result['noise']['causes'])}. Promotion on latency or throughput is refused unless "
                  "benchmark.allow_noisy: true (a size_mb or accuracy objective is not blocked)", file=sys.stderr)

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
