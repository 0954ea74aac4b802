"""Stage `attention_benchmark`: latency and peak memory of each attention kind against sequence
length, at the base model's shape with positions extended (see textcompress.deploy.attention_benchmark)."""

from pathlib import Path

from textcompress import catalog
from textcompress.deploy.attention_benchmark import plot_attention_benchmark, plot_skipped, run_attention_benchmark
from textcompress.fileio import write_json
from textcompress.models.checkpoints import encoder_shape, resolve_base
from textcompress.stages import run_stage


def main(argv=None):
    """Writes the attention kinds' latency and memory against sequence length (--out) and its plot."""
    def add(parser):
        parser.add_argument("--out", default=str(catalog.ATTENTION_BENCHMARK))
        parser.add_argument("--plot", default=str(catalog.ATTENTION_BENCHMARK_PLOT))

    def body(params, args):
        cfg = params["attention_benchmark"]
        if not cfg["enabled"]:
            skip = "not run: attention_benchmark.enabled is false (params/linear_attention.yaml runs it)"
            write_json(args.out, {"enabled": False, "reason": skip})
            plot_skipped(skip, Path(args.plot))
            print(skip)
            return
        like = encoder_shape(resolve_base(params["base_model"]))
        result = run_attention_benchmark(like, cfg["lengths"], cfg["kinds"], cfg["threads"], cfg["repeats"],
                                         cfg["performer_features"], cfg["linformer_length"])
        write_json(args.out, result)
        plot_attention_benchmark(result, Path(args.plot))
        for scope, summary in (("encoder", result["summary"]), ("attention only", result["attention_only"]["summary"])):
            for kind, row in summary.items():
                print(f"{scope}, {kind}: faster than softmax from length {row['crossover_length']}; at {result['lengths'][-1]}: "
                      f"{row['speedup_at_longest']:.1f}x faster, {row['memory_ratio_at_longest']:.1f}x less peak memory")

    run_stage(__doc__, add, body, argv)


if __name__ == "__main__":
    main()
