"""The report: one row per candidate, all measured in the same run, and the Pareto plot.

Writes `candidates.json` (the contract other tools read; `pick` names this run's pick, which the
registry treats as the challenger of its `champion`), `candidates.md` (for people),
`pareto.png` (accuracy against p50 latency, marker area by size, frontier drawn) and
`summary.json` (a few numbers for `dvc metrics show`).
"""

from __future__ import annotations

import math

from pathlib import Path

from textcompress.catalog import CANDIDATES_JSON, PARENT_SUFFIX  # noqa: F401 - PARENT_SUFFIX: benchmark entries timing a fp32 parent
from textcompress.data import describe_skipped
from textcompress.deploy.export import onnx_size_bytes
from textcompress.fileio import atomic_path, read_json, write_json
from textcompress.decisions.promotion import TIMED_OBJECTIVES, PromotionPolicy

TEACHER, BASELINE = "teacher", "int8-dynamic"
BENCH_FIELDS = ("latency_p50_ms", "latency_p95_ms", "throughput_per_s", "peak_rss_mb", "tokenize_p50_ms")


def _read(path: Path):
    return read_json(path) if path.is_file() else None


def build_report(candidates: dict, compressed_root: Path, onnx_root: Path, metrics_root: Path,
                 benchmark: dict, policy: dict, failures: dict | None = None) -> dict:
    failures = failures or {}
    chooser = PromotionPolicy.from_params(policy, teacher=TEACHER)
    teacher_metrics = _read(metrics_root / f"{TEACHER}.json")
    teacher_accuracy = teacher_metrics["accuracy"] if teacher_metrics else None
    teacher_selection = (teacher_metrics or {}).get("selection", {}).get("accuracy")
    rows = []
    for name, recipe in candidates.items():
        steps = _read(compressed_root / name / "steps.json") or {}
        exported = _read(onnx_root / name / "export.json") or {}
        metrics = _read(metrics_root / f"{name}.json")
        timing = benchmark["candidates"].get(name)
        parent_timing = benchmark["candidates"].get(name + PARENT_SUFFIX) or {}
        row = {"name": name, "recipe": recipe, "families": steps.get("families", []), "status": "ok", "reasons": []}
        missing = [what for what, value in (("evaluation", metrics), ("benchmark", timing), ("teacher evaluation", teacher_accuracy)) if value is None]
        if name in failures or missing:
            row.update(status="failed", reasons=[failures.get(name) or f"no {', '.join(missing)} result"])
        metrics, timing = metrics or {}, timing or {}
        accuracy = metrics.get("accuracy")
        selection = metrics.get("selection", {}).get("accuracy")
        upper = _points(metrics.get("accuracy_drop_upper"))
        selection_upper = _points(metrics.get("selection", {}).get("accuracy_drop_upper"))
        row.update({
            "selection_accuracy": selection,
            "selection_accuracy_drop": None if selection is None or teacher_selection is None else 100.0 * (teacher_selection - selection),
            "accuracy": accuracy,
            "macro_f1": metrics.get("macro_f1"),
            "f1": metrics.get("f1"),
            "accuracy_drop": None if accuracy is None or teacher_accuracy is None else 100.0 * (teacher_accuracy - accuracy),
            # The drop's one-sided paired bootstrap upper bound (points), per split and on the split promotion.select_on picks.
            "accuracy_drop_upper": upper,
            "selection_accuracy_drop_upper": selection_upper,
            "drop_upper": selection_upper if chooser.select_on == "selection" else upper,
            "drop_bound_level": metrics.get("bound_level"),
            "accuracy_ci": metrics.get("accuracy_ci"),
            "size_mb": onnx_size_bytes(onnx_root / name) / 1e6 if (onnx_root / name).is_dir() else None,
            "compressed_mb": exported["compressed_bytes"] / 1e6 if "compressed_bytes" in exported else None,
            "parent_latency_p50_ms": parent_timing.get("latency_p50_ms"),
            "params": steps.get("params"),
            **{field: timing.get(field) for field in BENCH_FIELDS},
            "parity_max_abs_diff": exported.get("parity_max_abs_diff"),
            "label_agreement": metrics.get("label_agreement"),
            "details": {"compress": steps.get("steps", []), "export": exported.get("steps", []),
                        "label_agreement_with_fp32": exported.get("label_agreement_with_fp32"),
                        "torch_validation_accuracy": steps.get("torch_validation_accuracy")},
        })
        if row["status"] == "ok":
            row["reasons"] = chooser.eligibility_reasons(row, exported)
        row["eligible"] = row["status"] == "ok" and not row["reasons"]
        rows.append(row)
    return {"teacher": TEACHER, "baseline": BASELINE, "pick": chooser.pick(rows),
            "environment": benchmark.get("environment", {}), "benchmark": {k: benchmark.get(k) for k in ("sentences", "batch_size", "warmup", "machine_load", "noise")},
            "policy": policy, "rows": rows}


def _points(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def ratios(report: dict, name: str, against: str) -> dict | None:
    """How much smaller and faster `name` is than `against`, and its accuracy drop relative to it."""
    rows = {r["name"]: r for r in report["rows"]}
    a, b = rows.get(name), rows.get(against)
    if not a or not b or a["status"] != "ok" or b["status"] != "ok":
        return None
    return {"smaller": b["size_mb"] / a["size_mb"], "faster_p50": b["latency_p50_ms"] / a["latency_p50_ms"],
            "accuracy_drop_points": 100.0 * (b["accuracy"] - a["accuracy"])}


def summary(report: dict) -> dict:
    rows = {r["name"]: r for r in report["rows"]}
    out = {"teacher_accuracy": rows[TEACHER]["accuracy"], "pick": report["pick"]}
    if report["pick"]:
        pick = rows[report["pick"]]
        out.update(pick_accuracy=pick["accuracy"], pick_latency_p50_ms=pick["latency_p50_ms"], pick_size_mb=pick["size_mb"])
        for against in (TEACHER, BASELINE):
            r = ratios(report, report["pick"], against)
            if r:
                out.update({f"vs_{against}_{k}": v for k, v in r.items()})
    return out


def _fmt(value, spec):
    return "—" if value is None else format(value, spec)


def to_markdown(report: dict) -> str:
    rows = {r["name"]: r for r in report["rows"]}
    teacher = rows.get(TEACHER, {})
    env = report.get("environment", {})
    lines = [
        "# Candidates", "",
        f"Pick of this run (the registry's challenger): **{report['pick'] or 'none qualifies'}** "
        f"(policy: lowest `{report['policy']['objective']}` within {report['policy']['max_accuracy_drop']} points of the teacher"
        f"{', judged on the upper bound of the drop' if report['policy'].get('budget_on') == 'bound' else ''}).",
        "",
        f"All timings from one run, interleaved in one process: ONNX Runtime {env.get('onnxruntime', '?')}, "
        f"{env.get('threads', '?')} thread(s), {env.get('cpu', '?')} ({env.get('vector_isa', 'vector ISA not recorded')}); "
        f"p50/p95 at batch 1, throughput at batch "
        f"{report['benchmark'].get('batch_size')} over {report['benchmark'].get('sentences')} validation sentences.",
        "",
        *noise_warning(report),
        f"drop bound: the one-sided paired bootstrap upper bound of the drop (points, on the "
        f"{report['policy'].get('select_on', 'validation')} split); the budget judges "
        f"{'it' if report['policy'].get('budget_on') == 'bound' else 'the drop itself (promotion.budget_on: point)'}.",
        "",
        "| candidate | families | accuracy | drop (pts) | drop bound | 95% CI | F1 | size MB | zipped MB | × smaller | p50 ms | × faster | p95 ms | sent/s | params | eligible |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        ok = r["status"] == "ok" and teacher.get("status") == "ok"
        smaller = teacher["size_mb"] / r["size_mb"] if ok else None
        faster = teacher["latency_p50_ms"] / r["latency_p50_ms"] if ok else None
        ci = "—" if not r["accuracy_ci"] else f"{100 * r['accuracy_ci'][0]:.1f}–{100 * r['accuracy_ci'][1]:.1f}"
        eligible = "yes" if r["eligible"] else ("failed" if r["status"] != "ok" else "no")
        lines.append(
            f"| {r['name']} | {', '.join(r['families']) or '—'} | {_fmt(r['accuracy'] and 100 * r['accuracy'], '.2f')} | "
            f"{_fmt(r['accuracy_drop'], '+.2f')} | {_fmt(r.get('drop_upper'), '+.2f')} | {ci} | {_fmt(r.get('f1') and 100 * r['f1'], '.2f')} | {_fmt(r['size_mb'], '.1f')} | {_fmt(r.get('compressed_mb'), '.1f')} | {_fmt(smaller, '.2f')} | "
            f"{_fmt(r['latency_p50_ms'], '.2f')} | {_fmt(faster, '.2f')} | {_fmt(r['latency_p95_ms'], '.2f')} | "
            f"{_fmt(r['throughput_per_s'], '.0f')} | {_fmt(r['params'], ',')} | {eligible} |")
    lines += skipped_rows_note(report.get("skipped_rows"))
    lines += ["", "## Why not eligible", ""]
    lines += [f"- **{r['name']}**: {'; '.join(r['reasons'])}" for r in report["rows"] if r["reasons"]] or ["- every candidate is eligible"]
    lines += ["", "![Pareto](pareto.png)", ""]
    lines += attention_section(report.get("attention_benchmark"))
    lines += ["## What each step did", ""]
    for r in report["rows"]:
        steps = r["details"]["compress"] + r["details"]["export"]
        if not steps:
            continue
        lines.append(f"- **{r['name']}**")
        for step in steps:
            shown = {k: v for k, v in (step.get("details") or {}).items() if k not in ("history", "heads_kept", "kept_fp32_by_sensitivity")}
            lines.append(f"  - `{step['technique']}`: " + ", ".join(f"{k}={_brief(v)}" for k, v in shown.items()))
            lines += _recovery_line((step.get("details") or {}).get("history"))
        if r.get("parent_latency_p50_ms") is not None:
            lines.append(f"  - fp32 parent p50 {r['parent_latency_p50_ms']:.2f} ms vs {_fmt(r['latency_p50_ms'], '.2f')} ms quantized")
    lines.append("")
    return "\n".join(lines)


def skipped_rows_note(skipped: dict | None) -> list[str]:
    """The bad rows prepare dropped (data.bad_rows: skip): no model trained or was measured on them."""
    said = describe_skipped(skipped)
    return ["", f"Data: {said}."] if said else []


def noise_warning(report: dict) -> list[str]:
    """A warning above the table when the benchmark ran on a busy machine (textcompress.deploy.noise)."""
    noise = report["benchmark"].get("noise") or {}
    if not noise.get("noisy"):
        return []
    objective = report["policy"]["objective"]
    consequence = (f"promotion on `{objective}` is refused unless `benchmark.allow_noisy: true`" if objective in TIMED_OBJECTIVES
                   else f"promotion on `{objective}` does not read the timing and is not blocked")
    return [f"> **Noisy benchmark**: {'; '.join(noise['causes'])}. Latencies and × faster may not hold on a quiet "
            f"machine; {consequence}.", ""]


def attention_section(bench: dict | None) -> list[str]:
    """Long inputs: where each linear-attention kind overtakes softmax attention (its own benchmark)."""
    if not bench or not bench.get("enabled", True):
        return []
    shape = bench["shape"]
    lines = ["## Long inputs: attention kinds against sequence length", "",
             f"Encoders of the base model's shape ({shape['layers']} layers, {shape['hidden']} wide, {shape['heads']} heads, "
             f"FFN {shape['ffn']}), random weights, ONNX Runtime CPU, batch 1, {bench['environment']['threads']} thread(s); "
             "latency (ms) / peak memory (MB).", ""]
    lines += _attention_scope("Whole encoder (what a user deploys)", bench["lengths"], bench)
    if bench.get("attention_only"):
        lines += _attention_scope("Attention sublayers only (the same layers with the FFN skipped: what the kinds change)",
                                  bench["lengths"], bench["attention_only"])
    return lines + ["![Attention kinds](attention_benchmark.png)", ""]


def _attention_scope(title: str, lengths: list[int], scope: dict) -> list[str]:
    kinds, longest = scope["kinds"], lengths[-1]
    lines = [f"**{title}**", "", "| length | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for i, n in enumerate(lengths):
        lines.append(f"| {n} | " + " | ".join(f"{kinds[k]['latency_ms'][i]:.1f} / {kinds[k]['peak_rss_mb'][i]:.0f}" for k in kinds) + " |")
    lines.append("")
    for kind, row in scope["summary"].items():
        where = f"from length {row['crossover_length']}" if row["crossover_length"] else "at no measured length"
        lines.append(f"- **{kind}** is faster than softmax {where}; at {longest}: {row['speedup_at_longest']:.1f}× lower latency, "
                     f"{row['memory_ratio_at_longest']:.1f}× lower peak memory.")
    return lines + [""]


def _recovery_line(history) -> list[str]:
    """Validation accuracy before the step's fine-tune and after each of its epochs."""
    if not history or "validation_accuracy_before" not in history[0]:
        return []
    after = ", ".join(f"{h['validation_accuracy'] * 100:.2f} %" for h in history if h.get("validation_accuracy") is not None)
    return [f"    - validation accuracy before its fine-tune {history[0]['validation_accuracy_before'] * 100:.2f} %, "
            f"after each epoch {after}"]


def _brief(value) -> str:
    """Long per-layer dicts (ranks of 36 matrices) summarised so that the table stays readable."""
    if isinstance(value, dict) and len(value) > 8:
        numbers = [v for v in value.values() if isinstance(v, (int, float))]
        return f"{len(value)} entries" + (f" (min {min(numbers)}, max {max(numbers)})" if numbers else "")
    return str(value)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated (lower latency and higher accuracy is better), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(report: dict, out_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if rows:
        x = [r["latency_p50_ms"] for r in rows]
        y = [100 * r["accuracy"] for r in rows]
        sizes = [max(20.0, 6 * r["size_mb"]) for r in rows]
        colors = ["tab:green" if r["name"] == report["pick"] else "tab:gray" if r["name"] == TEACHER else "tab:blue" for r in rows]
        ax.scatter(x, y, s=sizes, c=colors, alpha=0.6, edgecolors="black")
        for r, xi, yi in zip(rows, x, y):
            ax.annotate(f"{r['name']} ({r['size_mb']:.1f} MB)", (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=8)
        front = pareto_front(list(zip(x, y)))
        ax.plot([x[i] for i in front], [y[i] for i in front], "--", color="tab:green", linewidth=1, label="Pareto frontier")
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter

        def tick(value, _):  # "3", not "3×10⁰"; only 1, 2, 3 and 5 per decade, so labels never crowd
            lead = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
            return f"{value:g}" if lead in (1, 2, 3, 5) else ""

        for axis_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis_formatter(FuncFormatter(tick))
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy vs latency (marker area ∝ ONNX size)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def model_card(report: dict, context: dict) -> str:
    """A short card for this run's pick: what it is, what it was measured on, where it stops.
    `context`: data_version, base_model, max_length, labels (from the stage)."""
    rows = {r["name"]: r for r in report["rows"]}
    name = report["pick"]
    if name is None:
        return "# Model card\n\nNo candidate met the promotion policy in this run, so there is no model to describe.\n"
    from textcompress.config import candidate_form  # the two ways a candidate is written (its steps, or {seed, steps})

    r, teacher = rows[name], rows[TEACHER]
    ci = r["accuracy_ci"] or [float("nan")] * 2
    seed, steps = candidate_form(r["recipe"])
    recipe = "\n".join(f"  {i}. `{next(iter(step))}` {step[next(iter(step))] or ''}" for i, step in enumerate(steps, 1))
    if seed is not None:
        recipe += f"\n  (trained with its own seed, {seed})"
    return "\n".join([
        f"# Model card: {name}", "",
        f"- **What**: a {', '.join(r['families']) or 'uncompressed'} compression of "
        f"{context.get('teacher', 'a text classifier fine-tuned from `' + str(context['base_model']) + '`')}; "
        f"labels {context['labels']}{'; it reads sentence pairs (`text`, `text_pair`)' if context.get('pairs') else ''}.",
        f"- **Data**: training and validation as versioned by DVC (data.dvc md5 `{context['data_version']}`).",
        f"- **Teacher**: validation accuracy {100 * teacher['accuracy']:.2f}%, {teacher['size_mb']:.1f} MB, "
        f"p50 {teacher['latency_p50_ms']:.2f} ms.",
        "- **Recipe**:", recipe,
        f"- **Quality** ({r.get('label_agreement') is not None and 'agreement with the teacher ' + format(r['label_agreement'], '.4f') or ''}): "
        f"accuracy {100 * r['accuracy']:.2f}% (95% bootstrap CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f}), "
        f"{r['accuracy_drop']:+.2f} points against the teacher, macro-F1 {r['macro_f1']:.4f}.",
        f"- **Cost**: {r['size_mb']:.1f} MB ({teacher['size_mb'] / r['size_mb']:.1f}× smaller), p50 {r['latency_p50_ms']:.2f} ms "
        f"({teacher['latency_p50_ms'] / r['latency_p50_ms']:.1f}× faster), {r['throughput_per_s']:.0f} sentences/s at batch "
        f"{report['benchmark'].get('batch_size')}; {report['environment'].get('cpu', '?')}, ONNX Runtime "
        f"{report['environment'].get('onnxruntime', '?')}, {report['environment'].get('threads', '?')} thread(s).",
        "- **Limits**: inputs are cut to "
        f"{context['max_length']} word-pieces; measured on one validation set in one domain and language, so accuracy "
        "elsewhere is unknown; latency is this machine's, and ratios between candidates transfer better than milliseconds; "
        "int8 models may differ from fp32 on borderline inputs (see label agreement).",
        "",
    ])


def write_report(report: dict, out_dir: Path, card_context: dict | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_pareto(report, out_dir / "pareto.png")
    write_json(out_dir / CANDIDATES_JSON.name, report)
    with atomic_path(out_dir / "candidates.md") as tmp:
        tmp.write_text(to_markdown(report))
    if card_context is not None:
        with atomic_path(out_dir / "model_card.md") as tmp:
            tmp.write_text(model_card(report, card_context))
    write_json(out_dir / "summary.json", summary(report))
