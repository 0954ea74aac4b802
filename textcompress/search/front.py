"""A search's results as data: each trial's scores, the front, the budget, the seeds' spread, and
what reports/search/ holds (front.json, candidates.json/.md, front.png, recipes.yaml, cost.json).

Trials are scored on the selection split only (carved from training data): `trial_scores` reads
nothing else of evaluate's metrics, so validation can only gate the final run. Pure functions
over plain dicts (a trial is its record: candidate, recipe, state, scores, seconds), no Optuna."""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from textcompress.config import candidate_form
from textcompress.errors import TextcompressError
from textcompress.fileio import atomic_path

SCORED_ON = "selection"


def trial_scores(metrics: dict, timing: dict, objective: str) -> dict:
    """One trained trial's figures: its accuracy drop on the selection split (points, and the one-sided
    95 % bootstrap bound), its latency as a fraction of the teacher's p50 timed interleaved with it,
    its size; `values` are the two objectives Optuna minimises."""
    selection = metrics.get(SCORED_ON)
    if not selection or "accuracy_drop" not in selection:
        raise TextcompressError(f"candidate {metrics.get('candidate')}: evaluate wrote no selection-split drop. Fix: "
                                "set data.selection_fraction above 0 (e.g. 0.05): trials are scored on it, never on validation")
    ratio = timing["latency_p50_ms"] / timing["teacher_latency_p50_ms"]
    scores = {"accuracy": selection["accuracy"], "drop": 100.0 * selection["accuracy_drop"],
              "drop_upper": 100.0 * selection["accuracy_drop_upper"], "latency_p50_ms": timing["latency_p50_ms"],
              "teacher_latency_p50_ms": timing["teacher_latency_p50_ms"], "latency_ratio": ratio,
              "faster": 1.0 / ratio, "size_mb": timing["size_mb"], "smaller": timing["teacher_size_mb"] / timing["size_mb"],
              "scored_on": SCORED_ON, "rows": selection.get("rows")}
    scores["values"] = [scores["drop"], ratio if objective == "latency_p50_ms" else scores["size_mb"]]
    return scores


def budget_drop(scores: dict, budget_on: str) -> float:
    """The drop the budget is judged on: the point estimate, or its bootstrap bound (promotion.budget_on)."""
    return scores["drop_upper"] if budget_on == "bound" else scores["drop"]


def pareto(trials: list[dict]) -> list[dict]:
    """The completed trials no other completed trial beats on drop, speed and size together, one per
    candidate, in order of the drop. Size counts even when Optuna was steered by latency (and speed
    when by size): a member 15x smaller that lost on latency alone is what a deployer may want."""
    done = {}
    for trial in trials:
        if trial["state"] == "complete":
            done.setdefault(trial["candidate"], trial)  # a repeated configuration: its first trial stands for it
    points = list(done.values())
    kept = [t for t in points if not any(_beats(u["scores"], t["scores"]) for u in points)]
    return sorted(kept, key=lambda t: t["scores"]["values"])


def _beats(a: dict, b: dict, on: tuple[str, ...] = ("drop", "faster", "smaller")) -> bool:
    """a is no worse than b on each figure of `on` (a lower drop, a higher speed-up and size reduction), and better on one."""
    mine, theirs = ([x[k] if k == "drop" else -x[k] for k in on] for x in (a, b))
    return all(x <= y for x, y in zip(mine, theirs)) and mine != theirs


def within_budget(front: list[dict], max_drop: float, budget_on: str) -> list[dict]:
    return [t for t in front if budget_drop(t["scores"], budget_on) <= max_drop]


def closest(trials: list[dict], budget_on: str) -> dict | None:
    done = [t for t in trials if t["state"] == "complete"]
    return min(done, key=lambda t: budget_drop(t["scores"], budget_on)) if done else None


def nothing_met(trials: list[dict], max_drop: float, budget_on: str) -> str:
    best = closest(trials, budget_on)
    judged = "bound of the drop" if budget_on == "bound" else "drop"
    if best is None:
        return f"nothing met the budget ({max_drop} points): no trial completed"
    s = best["scores"]
    return (f"nothing met the budget ({judged} ≤ {max_drop} points on the selection split), closest: {best['candidate']} "
            f"({s['drop']:.2f} points, bound {s['drop_upper']:.2f}; {s['faster']:.2f}× faster, {s['smaller']:.2f}× smaller)")


def seed_spread(runs: list[dict]) -> dict:
    """Mean and spread (sample standard deviation; max − min) over a front member's seeds."""
    def stats(values: list[float]) -> dict:
        return {"values": values, "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0, "range": max(values) - min(values)}

    return {"seeds": [r["seed"] for r in runs], "accuracy": stats([r["accuracy"] for r in runs]),
            "drop": stats([r["drop"] for r in runs]), "split": SCORED_ON}


def whole_recipe_seconds(trials: list[dict]) -> float | None:
    """The mean time of a completed trial that trained every step itself (none loaded from the prefix store)."""
    whole = [t["seconds"] for t in trials if t["state"] == "complete" and not t.get("from_store")
             and "ran" in (t.get("stages") or {}).values()]
    return statistics.fmean(whole) if whole else None


def seed_plan(members: list[dict], seeds: int, first_seed: int, done: dict[str, list[dict]], workers: int,
              seconds_left: float | None = None, whole_seconds: float | None = None
              ) -> tuple[list[tuple[str, int]], dict[str, str], float]:
    """Which seeds to train: each member's seeds first_seed+1 .. first_seed+seeds-1 not in `done`
    (kept from an earlier run of the study), a member's all or none, members in the order of the
    objective (fastest or smallest first), while the estimate fits `seconds_left` (None: no limit).
    A seed is estimated at its member's trial time, `workers` at a time; at least `whole_seconds`
    (whole_recipe_seconds) if the trial loaded steps from the prefix store, since another seed
    trains them all. Returns the (member, seed) jobs, why each member was left out, and the
    estimated wall seconds."""
    jobs, skipped, costs = [], {}, []
    for member in sorted(members, key=lambda t: t["scores"]["values"][1]):
        have = {run["seed"] for run in done.get(member["candidate"], [])}
        missing = [first_seed + k for k in range(1, seeds) if first_seed + k not in have]
        each = max(member["seconds"], whole_seconds or 0.0) if member.get("from_store") else member["seconds"]
        more = costs + [each] * len(missing)
        if missing and seconds_left is not None and _wall(more, workers) > seconds_left:
            skipped[member["candidate"]] = (
                f"its {len(missing)} seeds (about {len(missing) * each / 60:.0f} min) did not fit in the "
                f"{max(0.0, seconds_left - _wall(costs, workers)) / 60:.0f} min left of search.minutes")
            continue
        costs = more
        jobs += [(member["candidate"], seed) for seed in missing]
    return jobs, skipped, _wall(costs, workers)


def _wall(seconds: list[float], workers: int) -> float:
    return max(sum(seconds) / max(1, workers), max(seconds, default=0.0))


def room_for_trials(trials: list[dict], max_drop: float, seeds: int, first_seed: int, done: dict[str, list[dict]],
                    workers: int, seconds_left: float | None) -> str | None:
    """None while another batch of trials fits the time left; else why not. The batch is estimated
    at the mean trial time, and the seeds still owed to the front's members within the budget
    (on the drop, as finish confirms them) are kept time for, so the search ends near its minutes."""
    if seconds_left is None:
        return None
    typical = cost_file(trials)["mean_completed_seconds"] or 0.0
    members = within_budget(pareto(trials), max_drop, "point")
    reserve = seed_plan(members, seeds, first_seed, done, workers, whole_seconds=whole_recipe_seconds(trials))[2]
    if seconds_left > 0 and typical + reserve <= seconds_left:
        return None
    return (f"no more trials: {seconds_left / 60:.0f} min were left of search.minutes, and a trial (about {typical / 60:.0f} "
            f"min) and the seeds of {len(members)} front member(s) within the budget (about {reserve / 60:.0f} min) "
            "would take more")


def front_file(trials: list[dict], objective: str, max_drop: float, budget_on: str) -> dict:
    """What reports/search/front.json holds after every trial: the front so far, each member's
    recipe and figures, and whether it is within the budget."""
    front = pareto(trials)
    counts = {state: sum(t["state"] == state for t in trials) for state in ("complete", "pruned", "failed")}
    return {"objective": objective, "scored_on": SCORED_ON, "max_accuracy_drop": max_drop, "budget_on": budget_on,
            "trials": len(trials), **counts,
            "front": [{"candidate": t["candidate"], "trial": t["number"], "recipe": t["recipe"],
                       "within_budget": budget_drop(t["scores"], budget_on) <= max_drop,
                       **{k: v for k, v in t["scores"].items() if k != "values"}} for t in front]}


def cost_file(trials: list[dict]) -> dict:
    """The search's own cost. A pruned trial saved, by estimate, what a completed trial took on
    average (one that trained, not one DVC found cached) less what it took before it stopped.
    `steps_from_prefix_store`: the trials that loaded their first steps instead of training them."""
    done = [t["seconds"] for t in trials if t["state"] == "complete"]
    trained = [t["seconds"] for t in trials if t["state"] == "complete" and "ran" in (t.get("stages") or {}).values()]
    typical = statistics.fmean(trained or done) if done else None
    pruned = [t for t in trials if t["state"] == "pruned"]
    saved = [max(0.0, typical - t["seconds"]) for t in pruned] if typical is not None else []
    return {"trials": len(trials), "completed": len(done), "pruned": len(pruned),
            "failed": sum(t["state"] == "failed" for t in trials), "seconds": round(sum(t["seconds"] for t in trials), 1),
            "mean_completed_seconds": None if typical is None else round(typical, 1),
            "seconds_saved_by_early_stopping": round(sum(saved), 1),
            "saved_per_pruned_trial": {t["candidate"]: round(s, 1) for t, s in zip(pruned, saved)},
            "steps_from_prefix_store": {t["candidate"]: t["from_store"] for t in trials if t.get("from_store")}}


def recipes_yaml(front: list[dict]) -> str:
    """Each front member as a `candidates:` entry to paste into a params file."""
    lines = ["# The search's front, each member as a candidates: entry (paste under `candidates:`).", ""]
    for t in front:
        s = t["scores"]
        lines.append(f"# {t['candidate']}: {s['drop']:+.2f} points on the selection split (bound {s['drop_upper']:.2f}), "
                     f"{s['faster']:.2f}x faster, {s['smaller']:.2f}x smaller")
        lines.append(yaml.safe_dump({t["candidate"]: t["recipe"]}, sort_keys=False, default_flow_style=None).rstrip())
        lines.append("")
    return "\n".join(lines)


def search_rows(report: dict, front: list[dict], spreads: dict[str, dict], paired=None, level: float = 0.05) -> dict:
    """The final run's candidates.json: each front row with its trial's selection figures and its
    seeds' mean and spread; each hand-written row (the params' candidates) with the front member
    that beats it on validation (`beaten_by`, null if none does) and, where none does, the one that
    beats it within noise (`beaten_within_noise`, see there; `paired(member, name)` is McNemar's
    test of the two on the validation rows)."""
    by_name = {t["candidate"]: t for t in front}
    beaten = beaten_by(report, list(by_name))
    noise = beaten_within_noise(report, list(by_name), [name for name, member in beaten.items() if member is None],
                                paired, level) if paired else {}
    rows = []
    for row in report["rows"]:
        trial = by_name.get(row["name"])
        extra = {"beaten_by": beaten[row["name"]]} if row["name"] in beaten else {}
        if row["name"] in noise:
            extra["beaten_within_noise"] = noise[row["name"]]
        rows.append({**row, **extra, "search": None if trial is None else {
            "trial": trial["number"], **{k: v for k, v in trial["scores"].items() if k != "values"},
            "seeds": spreads.get(row["name"])}})
    return {**report, "rows": rows}


def beaten_by(report: dict, members: list[str]) -> dict[str, str | None]:
    """Each hand-written candidate of a run (neither its teacher nor a front member), and the first
    front member that is no worse on its validation drop, speed-up and size reduction, and better
    on one (all from this run: one teacher, one benchmark); None where no member is."""
    rows = {r["name"]: r for r in report["rows"]}
    teacher = rows.get(report["teacher"], {})
    ours = [(name, against_teacher(rows[name], teacher)) for name in members if name in rows]
    result = {}
    for name, row in rows.items():
        if name == report["teacher"] or name in members:
            continue
        theirs = against_teacher(row, teacher)
        result[name] = next((member for member, mine in ours if mine and theirs and _beats(mine, theirs)), None)
    return result


def beaten_within_noise(report: dict, members: list[str], names: list[str], paired, level: float) -> dict[str, dict | None]:
    """Each of `names` (hand-written candidates no member beats on the point estimates), and the most
    accurate front member that is no worse on speed-up and size, better on one, and not significantly
    less accurate on the same validation rows (McNemar's test at `level`, as promotion.require_significance
    judges a challenger); None where no member is. On 872 sentences, two models 93 % in agreement
    differ by 3-5 sentences by chance alone, so a point-estimate loss of that size decides nothing."""
    rows = {r["name"]: r for r in report["rows"]}
    teacher = rows.get(report["teacher"], {})
    ours = sorted(((name, against_teacher(rows[name], teacher)) for name in members if name in rows),
                  key=lambda pair: pair[1]["drop"] if pair[1] else float("inf"))
    result = {}
    for name in names:
        theirs, result[name] = against_teacher(rows[name], teacher), None
        for member, mine in ours:
            if not (mine and theirs and _beats(mine, theirs, on=("faster", "smaller"))):
                continue
            test = paired(member, name)
            if test is None:
                continue
            worse = test["only_b_correct"] > test["only_a_correct"]
            if not (worse and test["p_value"] < level):
                result[name] = {"member": member, "member_only_correct": test["only_a_correct"],
                                "theirs_only_correct": test["only_b_correct"], "p_value": test["p_value"], "level": level,
                                "faster": mine["faster"] / theirs["faster"], "smaller": mine["smaller"] / theirs["smaller"]}
                break
    return result


def against_teacher(row: dict, teacher: dict) -> dict | None:
    """A run's row as drop (points), speed-up and size reduction against the teacher of that run."""
    if row.get("status") != "ok" or teacher.get("status") != "ok":
        return None
    return {"drop": 100 * (teacher["accuracy"] - row["accuracy"]), "faster": teacher["latency_p50_ms"] / row["latency_p50_ms"],
            "smaller": teacher["size_mb"] / row["size_mb"]}


def to_markdown(report: dict, said: str) -> str:
    rows = {r["name"]: r for r in report["rows"]}
    teacher = rows.get(report["teacher"], {})
    lines = ["# Search front", "", said, "",
             "Trials were scored on the selection split; the accuracy, drop and ratios below are the final run's "
             "(validation, one benchmark, interleaved); seeds: mean ± standard deviation of the selection accuracy.", "",
             "| candidate | recipe | accuracy | drop (pts) | × smaller | × faster | seeds: selection accuracy | eligible |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        ratios = against_teacher(r, teacher)
        smaller = f"{ratios['smaller']:.2f}" if ratios else "—"
        faster = f"{ratios['faster']:.2f}" if ratios else "—"
        seeds = ((r.get("search") or {}).get("seeds") or {}).get("accuracy")
        spread = f"{100 * seeds['mean']:.2f} ± {100 * seeds['std']:.2f} % ({len(seeds['values'])})" if seeds else "—"
        recipe = ", ".join(next(iter(step)) for step in candidate_form(r["recipe"])[1]) or "—"
        accuracy = "—" if r.get("accuracy") is None else f"{100 * r['accuracy']:.2f} %"
        drop = "—" if r.get("accuracy_drop") is None else f"{r['accuracy_drop']:+.2f}"
        lines.append(f"| {r['name']} | {recipe} | {accuracy} | {drop} | {smaller} | {faster} | {spread} | "
                     f"{'yes' if r['eligible'] else 'no: ' + '; '.join(r['reasons'])} |")
    hand_written = [r for r in report["rows"] if "beaten_by" in r]
    if hand_written:
        lines += ["", "Hand-written candidates against the front (this run's validation figures; beaten: a member no worse "
                  "on drop, speed-up and size, better on one; within noise: no worse on speed-up and size, better on one, and not "
                  "significantly less accurate on the same sentences):", ""]
        lines += [f"- {r['name']}: " + (f"beaten by {r['beaten_by']}" if r["beaten_by"] else "not beaten by any member")
                  + _within_noise(r) for r in hand_written]
    return "\n".join(lines + ["", "![front](front.png)", ""])


def _within_noise(row: dict) -> str:
    if "beaten_within_noise" not in row:
        return ""
    noise = row["beaten_within_noise"]
    if noise is None:
        return "; none is faster and smaller without being significantly less accurate"
    a, b = noise["member_only_correct"], noise["theirs_only_correct"]
    return (f"; within noise by {noise['member']}: {noise['faster']:.2f}x faster and {noise['smaller']:.2f}x smaller, and of "
            f"the {a + b} sentences where the two disagree it gets {a} right and {row['name']} {b} (McNemar p = "
            f"{noise['p_value']:.2f}: not significantly less accurate at {noise['level']})")


def plot_front(trials: list[dict], max_drop: float, budget_on: str, out_path: Path) -> None:
    """Every completed trial's drop (selection split) against its speed-up over the teacher; the
    front marked, each member named with how much smaller it is (size is the third figure, so the
    front is not a line here); the budget drawn as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t["state"] == "complete"]
    front = pareto(trials)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([t["scores"]["faster"] for t in done], [t["scores"]["drop"] for t in done], c="tab:gray", alpha=0.5,
               label="trials")
    ax.scatter([t["scores"]["faster"] for t in front], [t["scores"]["drop"] for t in front], c="tab:green",
               edgecolors="black", label="front (drop, speed, size)")
    for t in front:
        ax.annotate(f"{t['candidate']} ({t['scores']['smaller']:.1f}x smaller)", (t["scores"]["faster"], t["scores"]["drop"]),
                    textcoords="offset points", xytext=(5, 3), fontsize=7)
    left, right = ax.get_xlim()
    ax.set_xlim(left, right + 0.35 * (right - left))  # room for the rightmost member's label
    ax.axhline(max_drop, color="tab:red", linewidth=1,
               label=f"budget: {max_drop} points ({'bound of the drop' if budget_on == 'bound' else 'drop'})")
    ax.set_xlabel("× faster than the teacher (p50, batch 1, timed interleaved)")
    ax.set_ylabel("accuracy drop on the selection split (points)")
    ax.set_title("Search: drop against speed-up")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
