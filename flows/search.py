"""A search: Optuna proposes recipes from `search.space`, each trial is a candidate trained through
the same DVC stages as a hand-written one, the front goes through one ordinary pipeline run.

    shared stages once in the run directory -> trials, in batches of --workers: each candidate
    `search-<key>`'s compress/export/evaluate in its own workspace (the project's DVC cache), then
    timed interleaved with the teacher's ONNX, scored on the selection split, told to the study
    -> the front; each member within the budget trained again with other seeds -> one pipeline
    run with the profile's candidates (teacher, int8-dynamic, any written by hand) and the front
    (benchmark, validation gates, promotion; which member beats each hand-written candidate)

`--minutes` bounds the whole search: no batch of trials starts unless it and the seeds owed to
the front are expected to end within it, and seeds that would not fit are left out and named.

The study lives in `search.db` in the run directory (load_if_exists): a killed search resumes, and
a repeated recipe is the same DVC stage, found in the run-cache; each seed trained is kept in the
study too, so a resumed search trains only the seeds still owed. reports/search/front.json is
rewritten after every trial, so the best found so far is never lost. Latency is measured the
benchmark stage's way (benchmark.threads, interleaved with the teacher) while no trial trains.
Each trial's workspace also lists the study's other recipes (never run there), so that compress
stores a training prefix one of them shares and a later trial that begins the same way loads it
(techniques/prefix_store.py): the start recipes of a study mostly share their first distillation.

Run: textcompress search --params params/search.yaml [--trials N] [--minutes M] [--workers W --runner local|dask|ray]
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prefect import flow, task

from flows.pipeline import pipeline
from flows.sweep import candidate_workspace, cores, task_runner
from tasks.stages import StageFailed, run_dvc_stage
from textcompress import catalog
from textcompress.catalog import Catalog
from textcompress.config import load_params
from textcompress.decisions.champion import paired_test
from textcompress.decisions.registry import tracking_uri
from textcompress.errors import STOP_BELOW_ENV, ParamsError
from textcompress.fileio import atomic_path, read_json, write_json
from textcompress.search import front as fronts
from textcompress.search.space import candidate_name, check_space, recipe_params, sample_recipe

STUDY_FILE = str(catalog.SEARCH_STUDY)  # in the run directory
STUDY_NAME = "textcompress-search"
STOP_ENV = STOP_BELOW_ENV  # compress stops a recipe below this selection accuracy after its first training step
SHARED = ("prepare", "teach", "teacher_logits", "compress@teacher", "export@teacher", "evaluate@teacher")


def check_search_params(params: dict, path: str | Path) -> None:
    """What the search needs beyond a valid params file, said before anything runs."""
    if not params["data"]["selection_fraction"]:
        raise ParamsError(path, "data.selection_fraction", "is 0, and trials are scored on the selection split, "
                          "never on validation", "set data.selection_fraction: 0.05 (see params/search.yaml)")
    check_space(params["search"]["space"], lambda problem, fix: ParamsError(path, "search.space", problem, fix))


def write_candidates(workspace: Path, candidates: dict) -> None:
    """The workspace's params.yaml with these candidates (dvc.yaml's foreach reads them)."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["candidates"] = candidates
    with atomic_path(workspace / "params.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(params, sort_keys=False))


@task(task_run_name="trial {candidate}")
def train_trial(root: str, candidate: str, recipe, baseline: list, threads: int | None, stop_below: float | None,
                neighbours: dict | None = None) -> dict:
    """compress/export/evaluate of one trial in its own workspace (kept for timing; the flow
    removes it). `neighbours`, other recipes by name, are listed beside it only for the prefix
    store. A failure or an early stop is returned, not raised: the search goes on."""
    started = time.time()
    # One threshold for every trial of a search, so the environment can carry it to the stage.
    if stop_below is None:
        os.environ.pop(STOP_ENV, None)
    else:
        os.environ[STOP_ENV] = f"{stop_below:.6f}"
    workspace = candidate_workspace(Path(root), candidate)
    write_candidates(workspace, {"teacher": [], "int8-dynamic": baseline, **(neighbours or {}), candidate: recipe})
    result = {"candidate": candidate, "workspace": str(workspace), "stages": {}}
    try:
        for stage in (f"compress@{candidate}", f"export@{candidate}", f"evaluate@{candidate}"):
            result["stages"][stage] = run_dvc_stage.fn(stage, str(workspace), upstream=True, threads=threads)
        result["status"] = "ok"
    except StageFailed as err:
        result.update(status=failure_status(err), error=str(err), record=err.record.summary() if err.record else None)
    return {**result, "seconds": round(time.time() - started, 1), "from_store": steps_from_store(workspace, candidate)}


def known_recipes(params: dict, study, pending: list) -> dict:
    """Every recipe the study knows (start_from, its trials, the batch about to train), by candidate
    name: a trial's neighbours for the prefix store."""
    recipes = [*params["search"]["start_from"], *(t["recipe"] for t in records(study) if t["recipe"]), *pending]
    return {candidate_name(r): r for r in recipes}


def steps_from_store(workspace: Path, candidate: str) -> int:
    """How many of the trial's steps compress loaded from the prefix store (0 if none or not written)."""
    try:
        steps = read_json(Catalog(workspace).compressed(candidate) / "steps.json")["steps"]
    except (OSError, KeyError, ValueError):
        return 0
    return sum((s.get("prefix_store") or {}).get("source") == "store" for s in steps)


def failure_status(err: StageFailed) -> str:
    """A trial compress stopped on purpose (below the early-stopping threshold) is pruned; any other failure failed."""
    return "pruned" if err.record is not None and err.record.kind == "stopped_early" else "failed"


def time_trial(workspace: Path, candidate: str, params: dict) -> dict:
    """The trial's ONNX timed interleaved with the teacher's (the benchmark stage's way) on the
    first `search.benchmark_sentences` selection sentences; sizes of both files."""
    from textcompress.data import load_split
    from textcompress.deploy.benchmark import benchmark_candidates
    from textcompress.deploy.export import onnx_size_bytes

    ws = Catalog(workspace)
    cfg = params["benchmark"]
    texts = load_split(ws.PREPARED, fronts.SCORED_ON).texts[: params["search"]["benchmark_sentences"]]
    dirs = {"teacher": ws.onnx("teacher"), candidate: ws.onnx(candidate)}
    timed = benchmark_candidates(dirs, texts, cfg["threads"], cfg["warmup"], cfg["batch_size"], params["data"]["max_length"],
                                 measure_memory=False)["candidates"]
    return {"latency_p50_ms": timed[candidate]["latency_p50_ms"], "teacher_latency_p50_ms": timed["teacher"]["latency_p50_ms"],
            "size_mb": onnx_size_bytes(dirs[candidate]) / 1e6, "teacher_size_mb": onnx_size_bytes(dirs["teacher"]) / 1e6}


def trial_record(trial) -> dict:
    """An Optuna trial as front.py reads it."""
    attrs = trial.user_attrs
    return {"number": trial.number, "state": trial.state.name.lower().replace("fail", "failed"),
            "candidate": attrs.get("candidate"), "recipe": attrs.get("recipe"), "scores": attrs.get("scores"),
            "seconds": attrs.get("seconds", 0.0), "stages": attrs.get("stages", {}), "from_store": attrs.get("from_store", 0)}


def records(study) -> list[dict]:
    import optuna

    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return [trial_record(t) for t in study.trials if t.state in ended and "candidate" in t.user_attrs]


def scoring_setup(params: dict) -> dict:
    """What a trial's scores rest on besides its recipe: resuming a study under another setup would
    put scores of two different questions on one front."""
    return {"search.objective": params["search"]["objective"], "seed": params["seed"], "base_model": params["base_model"],
            **{f"{section}.{key}": value for section in ("data", "teach") for key, value in params[section].items()}}


def open_study(root: Path, params: dict, path: str | Path):
    """The study in search.db, created or resumed; trials a killed search left running are failed;
    the start_from recipes queued first, unless their candidate was tried already."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{root / STUDY_FILE}", study_name=STUDY_NAME, load_if_exists=True,
                                directions=["minimize", "minimize"])
    setup, stored = scoring_setup(params), study.user_attrs.get("setup")
    if stored is None:  # a study stored before the setup was: it recorded its objective only
        stored = {"search.objective": study.user_attrs["objective"]} if "objective" in study.user_attrs else {}
    for key, value in setup.items():
        if key in stored and stored[key] != value:
            raise ParamsError(path, key, f"is {value!r}, and {root / STUDY_FILE} holds a study scored with {stored[key]!r}",
                              f"set {key}: {stored[key]!r} to resume it, or move {root / STUDY_FILE} away to start anew")
    study.set_user_attr("setup", setup)
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.RUNNING:  # its search was killed
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    space = params["search"]["space"]
    tried = {t.user_attrs.get("candidate") for t in study.trials
             if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    for recipe in params["search"]["start_from"]:
        fixed = recipe_params(space, recipe, lambda problem, fix: ParamsError(path, "search.start_from", problem, fix))
        # Matched on the candidate the recipe makes, not on its parameters alone: a space that gained
        # a step (an optional distill) names the same recipe's parameters anew.
        if candidate_name(sample_recipe(space, optuna.trial.FixedTrial(fixed))) not in tried:
            study.enqueue_trial(fixed, skip_if_exists=True)
    # Seeded by how many trials exist, so a resumed search does not propose its first recipes again.
    study.sampler = optuna.samplers.TPESampler(seed=params["seed"] + len(study.trials),
                                               n_startup_trials=min(10, max(2, params["search"]["trials"] // 3)))
    return study


class Tracker:
    """MLflow: one parent run for the search (resumed with its study), a nested run per trial."""

    def __init__(self, root: Path, params: dict, study):
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(tracking_uri(params["mlflow"]["tracking_uri"], root))
        self.client = MlflowClient()
        experiment = mlflow.set_experiment(params["mlflow"]["experiment"]).experiment_id
        self.experiment, self.parent = experiment, study.user_attrs.get("mlflow_parent_run")
        if self.parent is None:
            self.parent = self.client.create_run(experiment, run_name=f"search {root.name}",
                                                 tags={"textcompress.search": str(root / STUDY_FILE)}).info.run_id
            study.set_user_attr("mlflow_parent_run", self.parent)
        if "objective" not in self.client.get_run(self.parent).data.params:
            self.client.log_param(self.parent, "objective", params["search"]["objective"])

    def trial(self, record: dict) -> None:
        run = self.client.create_run(self.experiment, run_name=f"trial {record['number']}: {record['candidate']}",
                                     tags={"mlflow.parentRunId": self.parent, "candidate": record["candidate"],
                                           "state": record["state"]})
        recipe = record["recipe"] if isinstance(record["recipe"], list) else []
        for position, step in enumerate(recipe, start=1):
            (name, args), = step.items()
            self.client.log_param(run.info.run_id, f"{position}.{name}", yaml.safe_dump(args, default_flow_style=True).strip())
        scores = record["scores"] or {}
        metrics = {"drop": scores.get("drop"), "drop_upper": scores.get("drop_upper"), "p50_ms": scores.get("latency_p50_ms"),
                   "ratio": scores.get("latency_ratio"), "size_mb": scores.get("size_mb"), "seconds": record["seconds"]}
        for key, value in metrics.items():
            if value is not None:
                self.client.log_metric(run.info.run_id, key, value)
        self.client.set_terminated(run.info.run_id, "FINISHED" if record["state"] == "complete" else "KILLED")

    def close(self, summary: dict) -> None:
        for key in ("trials", "complete", "pruned", "failed"):
            self.client.log_metric(self.parent, key, summary[key])
        self.client.set_terminated(self.parent)


def search(project_dir: str = ".", params_path: str = "params.yaml", trials: int | None = None, minutes: float | None = None,
           workers: int = 1, runner: str = "local", address: str | None = None, pull: bool = True) -> dict:
    """Run trials until `trials` more have ended or `minutes` have passed, then the front's seeds
    and one pipeline run. Returns the summary (reports/search/ holds the files)."""
    root = Path(project_dir).resolve()
    params = load_params(root / "params.yaml")
    check_search_params(params, params_path)
    cfg, promotion = params["search"], params["promotion"]
    trials = cfg["trials"] if trials is None else trials  # 0: no new trial, the finish alone
    minutes = minutes or cfg["minutes"]
    budget_on, max_drop = promotion.get("budget_on", "point"), promotion["max_accuracy_drop"]
    out = Catalog(root).SEARCH
    threads = max(1, cores() // workers) if address is None else None
    baseline = params["candidates"]["int8-dynamic"]
    study = open_study(root, params, params_path)
    tracker = Tracker(root, params, study)
    started = time.time()

    def seconds_left() -> float | None:
        return None if minutes is None else 60 * minutes - (time.time() - started)

    @flow(name="textcompress-search", log_prints=True, task_runner=task_runner(runner, workers, address))
    def run_search() -> dict:
        for stage in SHARED:  # once, here, so that trial workspaces find them in the run-cache
            run_dvc_stage(stage, str(root))
        stop_below = None  # the selection accuracy below which a trial stops after its first training step
        if cfg["stop_below_drop"] is not None:
            teacher = read_json(Catalog(root).metrics("teacher"))[fronts.SCORED_ON]["accuracy"]
            stop_below = teacher - cfg["stop_below_drop"] / 100.0
        ended = 0
        while ended < trials:
            full = fronts.room_for_trials(records(study), max_drop, cfg["seeds"], params["seed"], Seeds(study).runs,
                                          workers, seconds_left())
            if full:
                print(full)
                break
            batch = [study.ask() for _ in range(min(workers, trials - ended))]
            recipes = [sample_recipe(cfg["space"], t) for t in batch]
            names = [candidate_name(r) for r in recipes]
            unique = dict(zip(names, recipes))  # a batch trains a repeated recipe once
            known = known_recipes(params, study, recipes)
            futures = {n: train_trial.submit(str(root), n, r, baseline, threads, stop_below,
                                             {k: v for k, v in known.items() if k != n}) for n, r in unique.items()}
            results = {n: f.result() for n, f in futures.items()}
            for trial, recipe, name in zip(batch, recipes, names):
                tell(study, trial, recipe, results[name], params)
                tracker.trial(trial_record(study.trials[trial.number]))
                write_json(out / "front.json", fronts.front_file(records(study), cfg["objective"], max_drop, budget_on))
            for result in results.values():
                shutil.rmtree(result["workspace"], ignore_errors=True)
            ended += len(batch)
        os.environ.pop(STOP_ENV, None)  # seeds and the final run train whole recipes
        return finish(root, params, records(study), threads, Seeds(study, workers, seconds_left()))

    if pull:
        from tasks.tracking import pull_data

        pull_data(str(root))
    try:
        summary = run_search()
    except BaseException:
        tracker.client.set_terminated(tracker.parent, "FAILED")  # resumed, and running again, by the next search
        raise
    tracker.close(summary["cost"] | {"complete": summary["cost"]["completed"]})
    return summary


def tell(study, trial, recipe, result: dict, params: dict) -> None:
    """The trial's outcome to the study: its two objectives, or pruned (stopped early), or failed."""
    import optuna

    attrs = {"candidate": result["candidate"], "recipe": recipe, "seconds": result["seconds"], "stages": result["stages"],
             "from_store": result.get("from_store", 0)}
    scores = None
    if result["status"] == "ok":
        try:
            metrics = read_json(Catalog(Path(result["workspace"])).metrics(result["candidate"]))
            timing = time_trial(Path(result["workspace"]), result["candidate"], params)
            scores = fronts.trial_scores(metrics, timing, params["search"]["objective"])
        except (OSError, KeyError, ValueError) as err:  # a trial we cannot score is a failed trial
            result = {**result, "status": "failed", "error": f"{type(err).__name__}: {err}"}
    for key, value in {**attrs, "scores": scores, "error": result.get("error"), "record": result.get("record")}.items():
        trial.set_user_attr(key, value)
    if scores is not None:
        study.tell(trial, scores["values"])
    else:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED if result["status"] == "pruned" else optuna.trial.TrialState.FAIL)
    print(f"trial {trial.number} {result['candidate']}: {result['status']}" +
          (f", drop {scores['drop']:.2f} points (bound {scores['drop_upper']:.2f}), {scores['faster']:.2f}x faster, "
           f"{scores['smaller']:.2f}x smaller, {result['seconds']} s" if scores else f" ({result.get('error')})"))


@dataclass
class Seeds:
    """What the seeds of a finish rest on: the seeds trained before (`runs`, one list per member,
    kept in the study's user attribute `seeds` as each ends), how many train at once, and the
    seconds left of search.minutes (None: no limit)."""
    study: object = None
    workers: int = 1
    seconds_left: float | None = None
    whole_seconds: float | None = None  # a whole recipe's training time (front.whole_recipe_seconds)
    runs: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self):
        if self.study is not None:
            self.runs = dict(self.study.user_attrs.get("seeds", {}))

    def keep(self, member: str, run: dict) -> None:
        self.runs[member] = self.runs.get(member, []) + [run]
        if self.study is not None:
            self.study.set_user_attr("seeds", self.runs)


def finish(root: Path, params: dict, trials: list[dict], threads: int | None, seeds: Seeds | None = None) -> dict:
    """The front; its members within the budget trained again with other seeds (those that fit the
    time left); one pipeline run over the params' candidates (teacher, int8-dynamic, any written by
    hand) and the front; reports/search/.

    The members confirmed so are those within the budget on the selection split's point estimate:
    on some 800 sentences the bound sits 1 to 2 points above the drop, so a 1-point budget on the
    bound leaves out every compressed model there. Promotion then judges promotion.budget_on on
    validation, so nothing is promoted on the point estimate of one split."""
    seeds = seeds or Seeds()
    promotion = params["promotion"]
    budget_on, max_drop = promotion.get("budget_on", "point"), promotion["max_accuracy_drop"]
    out = Catalog(root).SEARCH
    front = fronts.pareto(trials)
    within = fronts.within_budget(front, max_drop, budget_on)
    confirmed = fronts.within_budget(front, max_drop, "point")  # within's members and more when judged on the bound
    cost = fronts.cost_file(trials)
    write_json(out / "cost.json", cost)
    fronts.plot_front(trials, max_drop, budget_on, out / "front.png")
    with atomic_path(out / "recipes.yaml") as tmp:
        tmp.write_text(fronts.recipes_yaml(front))
    if not confirmed:  # no promotion, no alias moved: the registry is not touched
        said = fronts.nothing_met(trials, max_drop, "point")
        with atomic_path(out / "candidates.md") as tmp:
            tmp.write_text(f"# Search front\n\n{said}\n\n![front](front.png)\n")
        print(said)
        return {"front": [t["candidate"] for t in front], "within_budget": [], "confirmed": [], "promotion": None, "said": said, "cost": cost}
    seeds_started = time.time()
    seeds.whole_seconds = fronts.whole_recipe_seconds(trials)  # a seed of a member that loaded a prefix trains it
    spreads, skipped = repeat_seeds(root, params, confirmed, threads, seeds)
    cost = {**cost, "seeds_seconds": round(time.time() - seeds_started, 1), "seeds_left_out": skipped}
    write_json(out / "cost.json", cost)
    # The params' candidates stay, so the front is measured beside them on one teacher and one benchmark.
    candidates = {**params["candidates"], "teacher": [], **{t["candidate"]: t["recipe"] for t in front}}
    write_candidates(root, candidates)
    summary = pipeline(project_dir=str(root), pull=False)
    report = fronts.search_rows(read_json(Catalog(root).CANDIDATES_JSON), front, spreads,
                                lambda member, name: paired_test(root, member, {"name": name}), promotion["significance_level"])
    write_json(out / "candidates.json", report)
    decision = summary["promotion"]
    said = (f"{len(front)} on the front, {len(confirmed)} within the budget on the selection split"
            + (f" ({len(within)} on the bound of the drop)" if budget_on == "bound" else "") + f"; promotion: {decision['reason']}"
            + "".join(f"\n\nSeeds of {member} not trained: {why}. Fix: run the search again with more --minutes "
                      "(the seeds trained so far are kept in the study)" for member, why in skipped.items()))
    with atomic_path(out / "candidates.md") as tmp:
        tmp.write_text(fronts.to_markdown(report, said))
    print(said)
    return {"front": [t["candidate"] for t in front], "within_budget": [t["candidate"] for t in within],
            "confirmed": [t["candidate"] for t in confirmed], "promotion": decision, "said": said, "cost": cost,
            "seeds": spreads, "seeds_left_out": skipped}


def repeat_seeds(root: Path, params: dict, members: list[dict], threads: int | None, seeds: Seeds) -> tuple[dict, dict]:
    """Each member trained again with seeds seed+1 .. seed+n-1 (the `{seed, steps}` form), scored on
    the selection split, those kept in the study skipped, those over the time left left out; with
    its own trial: the mean and spread of every seed it has. Returns them, and why any were left out."""
    n, first = params["search"]["seeds"], params["seed"]
    jobs, skipped, _ = fronts.seed_plan(members, n, first, seeds.runs, seeds.workers, seeds.seconds_left, seeds.whole_seconds)
    baseline = params["candidates"]["int8-dynamic"]
    recipes = {t["candidate"]: t["recipe"] for t in members}

    def seeded(member, seed):
        return candidate_name(recipes[member], seed), {"seed": seed, "steps": recipes[member]}

    # Beside each, the other members at the same seed: the prefix store shares what they begin with alike.
    futures = {(member, seed): train_trial.submit(str(root), *seeded(member, seed), baseline, threads, None,
                                                  dict(seeded(other, seed) for other in recipes if other != member))
               for member, seed in jobs}
    for (member, seed), future in futures.items():
        result = future.result()
        if result["status"] == "ok":
            selection = read_json(Catalog(Path(result["workspace"])).metrics(result["candidate"]))[fronts.SCORED_ON]
            seeds.keep(member, {"seed": seed, "accuracy": selection["accuracy"], "drop": 100.0 * selection["accuracy_drop"],
                                "seconds": result["seconds"], "from_store": result["from_store"]})
        shutil.rmtree(result["workspace"], ignore_errors=True)
    return {t["candidate"]: fronts.seed_spread([{"seed": first, "accuracy": t["scores"]["accuracy"], "drop": t["scores"]["drop"]}]
                                               + sorted(seeds.runs.get(t["candidate"], []), key=lambda run: run["seed"]))
            for t in members}, skipped
