"""The `textcompress` command: run the pipeline, or predict with a registered model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from textcompress.catalog import Catalog
from textcompress.errors import DEBUG_ENV, TextcompressError


def _check_checkpoints(where: Path) -> None:
    """Every checkpoint the params name resolves and loads, checked before Prefect starts: a stage
    that fails on it would first have let DVC delete that stage's last outputs."""
    from textcompress.config import load_params, with_step_lists
    from textcompress.models.checkpoints import check_sources

    check_sources(with_step_lists(load_params(where / "params.yaml")))


def cmd_run(args) -> None:
    from textcompress.workspace import run_directory

    project = Path(args.project).resolve()
    where = run_directory(args.params, project)
    if where != project:
        print(f"profile {args.params} runs in {where.relative_to(project)}/ (its reports and dvc.lock there; "
              "the project's DVC cache and MLflow registry)")
    _check_checkpoints(where)
    from flows.pipeline import pipeline

    pipeline(project_dir=str(where), pull=not args.no_pull)


def cmd_sweep(args) -> None:
    from textcompress.workspace import run_directory

    project = run_directory(args.params, Path(args.project).resolve())
    _check_checkpoints(project)
    from flows.sweep import sweep

    summary = sweep(str(project), workers=args.workers, runner=args.runner, address=args.address, pull=not args.no_pull)
    info = summary["sweep"]
    print(f"sweep on {info['runner']} ({info['workers']} workers): candidates trained in {info['fan_out_seconds']} s, "
          f"whole sweep {info['seconds']} s; failed: {[c['candidate'] for c in info['candidates'] if c['status'] != 'ok'] or 'none'}")


def cmd_search(args) -> None:
    from textcompress.workspace import profile_params, run_directory

    if args.trials is not None and args.trials < 0:
        raise TextcompressError(f"--trials {args.trials}: must be 0 or above (0: no new trial, only the seeds owed and "
                                "the final run). Fix: e.g. --trials 30")
    if args.minutes is not None and args.minutes <= 0:
        raise TextcompressError(f"--minutes {args.minutes:g}: must be above 0. Fix: e.g. --minutes 180")
    project = Path(args.project).resolve()
    where, params = profile_params(args.params, project)  # validates the file (the space too) before anything runs
    if where == project:
        raise TextcompressError(f"{args.params}: the search writes its front into the run's candidates, so it runs in "
                                "a profile's own directory, not on the project's params.yaml. Fix: "
                                "textcompress search --params params/search.yaml (or a copy of it)")
    from flows.search import check_search_params

    check_search_params(params, args.params)
    where = run_directory(args.params, project)
    print(f"search {args.params} runs in {where.relative_to(project)}/ (its study in {where.relative_to(project)}/search.db, "
          f"its results in {where.relative_to(project)}/reports/search/)")
    _check_checkpoints(where)
    from flows.search import search

    summary = search(str(where), args.params, trials=args.trials, minutes=args.minutes, workers=args.workers,
                     runner=args.runner, address=args.address, pull=not args.no_pull)
    cost = summary["cost"]
    print(f"search: {cost['trials']} trials in the study ({cost['completed']} completed, {cost['pruned']} stopped early, "
          f"{cost['failed']} failed), {cost['seconds']} s of trials, {cost['seconds_saved_by_early_stopping']} s saved "
          f"by early stopping; front: {', '.join(summary['front']) or 'empty'}")
    print(summary["said"])


def scheduled_deployment(project: Path, params: dict, cron: str | None = None) -> dict:
    """Options of the Prefect deployment `textcompress schedule` serves: the flow on a cron
    schedule, each run pulling data and skipping everything when nothing changed."""
    return {"name": params["schedule"]["name"], "cron": cron or params["schedule"]["cron"],
            "parameters": {"project_dir": str(project), "pull": True, "skip_unchanged": True},
            "description": "textcompress: scheduled retraining (skips when neither data nor params changed)"}


def cmd_schedule(args) -> None:
    """Serve the pipeline as a Prefect deployment on a cron schedule (runs until stopped)."""
    from textcompress.config import load_params
    from textcompress.workspace import run_directory

    project = run_directory(args.params, Path(args.project).resolve())
    params = load_params(project / "params.yaml")
    options = scheduled_deployment(project, params, args.cron)
    from flows.pipeline import pipeline

    print(f"serving deployment textcompress-pipeline/{options['name']} on cron '{options['cron']}' "
          f"(Ctrl-C stops; `prefect deployment run textcompress-pipeline/{options['name']}` runs it now)")
    pipeline.serve(**options)


def cmd_predict(args) -> None:
    import mlflow
    import pandas as pd

    from textcompress.config import load_params
    from textcompress.decisions.registry import tracking_uri

    params = load_params(Path(args.project) / "params.yaml")
    pairs = params["data"]["text_pair_column"] is not None
    texts, seconds = list(args.texts), list(args.pair or [])
    if seconds and not pairs:
        raise TextcompressError("--pair is for models of sentence pairs, and this project's reads single sentences "
                                "(data.text_pair_column is not set). Fix: drop --pair")
    if pairs and len(seconds) != len(texts):
        raise TextcompressError(f"this project's model reads sentence pairs; {len(texts)} sentence(s) but {len(seconds)} "
                                "--pair. Fix: give one --pair SECOND_SENTENCE per sentence, in order")
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise TextcompressError(f"{path}: file not found. Fix: pass an existing CSV (with a `text` column) or a text file")
        if path.suffix.lower() == ".csv":
            frame = pd.read_csv(path)
            for column in ("text", "text_pair") if pairs else ("text",):
                if column not in frame.columns:
                    raise TextcompressError(f"{path}:1: no `{column}` column (columns: {list(frame.columns)}). "
                                            f"Fix: name the columns `text`{' and `text_pair`' if pairs else ''}")
            texts += frame["text"].astype(str).tolist()
            seconds += frame["text_pair"].astype(str).tolist() if pairs else []
        elif pairs:
            raise TextcompressError(f"{path}: sentence pairs come in a CSV with `text` and `text_pair` columns. "
                                    "Fix: write the pairs as such a CSV")
        else:
            texts += [line for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise TextcompressError("nothing to predict. Fix: pass sentences as arguments or --file")
    rows = list(zip(texts, seconds)) if pairs else texts
    name = params["promotion"]["registered_model"]
    candidate_dir = Catalog(Path(args.project)).onnx(args.model or "")
    if args.model and candidate_dir.is_dir():
        from textcompress.deploy.inference import OnnxTextClassifier

        labels, probabilities = OnnxTextClassifier(candidate_dir, max_length=params["data"]["max_length"]).predict(rows)
        result = pd.DataFrame({"label": labels, "probability": probabilities})
    else:
        mlflow.set_tracking_uri(tracking_uri(params["mlflow"]["tracking_uri"], Path(args.project).resolve()))
        uri = args.model or f"models:/{name}@champion"
        try:
            model = mlflow.pyfunc.load_model(uri)
        except Exception as err:
            raise TextcompressError(f"cannot load {uri} ({err.__class__.__name__}). Fix: run the pipeline first, or pass "
                                    "--model with a candidate name or a model URI") from err
        result = model.predict(pd.DataFrame({"text": texts, **({"text_pair": seconds} if pairs else {})}))
    for row, label, probability in zip(rows, result["label"], result["probability"]):
        print(f"{label}\t{probability:.3f}\t{row if isinstance(row, str) else chr(9).join(row)}")


def _registry_context(project: Path):
    import mlflow

    from textcompress.config import load_params
    from textcompress.decisions.registry import tracking_uri

    params = load_params(project / "params.yaml")
    uri = tracking_uri(params["mlflow"]["tracking_uri"], project)
    mlflow.set_tracking_uri(uri)
    return params, uri


def cmd_promote(args) -> None:
    """Re-decide promotion from this run's report; --dry-run explains and changes nothing."""
    from textcompress.config import load_params
    from textcompress.fileio import read_json
    from textcompress.decisions.registry import promote_run

    project = Path(args.project).resolve()
    run = Catalog(project).RUN
    if not run.is_file():
        raise TextcompressError(f"{run}: not found. Fix: run the pipeline first (`textcompress run`)")
    params = load_params(project / "params.yaml")
    decision = promote_run(project, params, read_json(run)["versions"], dry_run=args.dry_run)
    verb = "would" if args.dry_run else "did"
    outcome = f"{verb} make {decision['challenger']} (version {decision.get('challenger_version')}) champion" \
        if decision["promoted"] else f"{verb} not move the champion"
    print(f"{outcome}: {decision['reason']}")
    print(f"current champion: {decision['previous_champion'] or 'none'}")
    if decision.get("paired_test"):
        t = decision["paired_test"]
        print(f"McNemar on {t['rows']} validation rows: only the challenger right on {t['only_a_correct']}, "
              f"only the champion on {t['only_b_correct']}, p = {t['p_value']:.3g}")


def cmd_rollback(args) -> None:
    from textcompress.decisions.registry import registry_lock, rollback

    project = Path(args.project).resolve()
    params, uri = _registry_context(project)
    with registry_lock(uri):
        result = rollback(params["promotion"]["registered_model"], args.reason)
    print(f"champion is version {result['champion']} again; version {result['demoted']} is tagged demoted ({result['reason']})")


def cmd_gc(args) -> None:
    """Retention: archive old registry versions (never the champion), then drop DVC cache entries
    that no kept revision uses, then recipe-prefix entries no run can use or none used lately."""
    import subprocess

    from textcompress.decisions.registry import archive_old_versions, registry_lock

    project = Path(args.project).resolve()
    params, uri = _registry_context(project)
    with registry_lock(uri):
        result = archive_old_versions(params["promotion"]["registered_model"], args.keep_versions, args.dry_run)
    verb = "would archive" if args.dry_run else "archived"
    print(f"{result['registered_model']}: {verb} versions {result['archived'] or 'none'}; kept "
          + ", ".join(f"{v} ({why})" for v, why in sorted(result["protected"].items(), key=lambda x: int(x[0]))))
    scope = ["--workspace"] + (["--all-commits"] if args.keep_git_history else [])
    command = [sys.executable, "-m", "dvc", "gc", *scope, "--force"] + (["--dry"] if args.dry_run else [])
    print("$ dvc gc " + " ".join(command[4:]), flush=True)  # before DVC's own lines, also when piped
    done = subprocess.run(command, cwd=project)
    if done.returncode != 0:
        raise TextcompressError(f"dvc gc failed (exit {done.returncode}). Fix: see DVC's message above")
    from textcompress.techniques.prefix_store import PREFIXES, prune

    store = Path(params["runtime"]["cache_dir"]).expanduser() / PREFIXES
    pruned = prune(store, args.prefix_days, args.dry_run)
    print(f"{store}: {'would remove' if args.dry_run else 'removed'} "
          + ", ".join(f"{len(keys)} {why}" for why, keys in pruned["removed"].items())
          + f" recipe-prefix entries ({pruned['bytes'] / 1e6:.1f} MB); kept {pruned['kept']}")


def _user_error(err: BaseException) -> TextcompressError | None:
    """The TextcompressError behind `err`, also when a flow or task runner wrapped it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, TextcompressError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _server_start_error(err: BaseException) -> TextcompressError | None:
    """Prefect's temporary server did not answer in time (its RuntimeError, with the server's whole
    output), said as a user error: what to set, and that the run changed nothing."""
    while err is not None:
        if isinstance(err, RuntimeError) and "connect to ephemeral Prefect API server" in str(err):
            waited = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "?")
            return TextcompressError(
                f"Prefect's temporary server did not start within {waited} s "
                "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); no stage ran and nothing changed. Fix: give it "
                "longer (export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=600), or start one with "
                "`prefect server start` and set PREFECT_API_URL to it, then rerun")
        err = err.__cause__ or err.__context__
    return None


class _NoUserErrorTracebacks(logging.Filter):
    """On the console, Prefect's log of a failed run keeps its line but not the traceback of a
    user error: main prints that error's message once, the traceback only with --debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _user_error(record.exc_info[1]) is not None:
            record.exc_info, record.exc_text = None, None
        return True


def _hide_prefect_user_error_tracebacks() -> None:
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's console handler exists from here on (later setups only update levels)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _NoUserErrorTracebacks) for f in handler.filters):
            handler.addFilter(_NoUserErrorTracebacks())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="textcompress", description=__doc__)
    parser.add_argument("--project", default=".", help="the project directory (default: here)")
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback (also from the stages), "
                                                            "not only its message")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline (Prefect flow over the DVC stages)")
    run.add_argument("--params", default="params.yaml", help="params file, e.g. params/quick.yaml")
    run.add_argument("--no-pull", action="store_true", help="do not `dvc pull data.dvc` first")
    run.set_defaults(func=cmd_run)
    predict = sub.add_parser("predict", help="label sentences with the champion, a candidate or a model URI")
    predict.add_argument("texts", nargs="*")
    predict.add_argument("--pair", action="append", help="the second sentence of each pair, in order (models of sentence pairs)")
    predict.add_argument("--file", help="a CSV with a `text` column (and `text_pair` for pairs), or a text file with one sentence per line")
    predict.add_argument("--model", help="a candidate name (artifacts/onnx/NAME) or an MLflow model URI; default: the champion")
    predict.set_defaults(func=cmd_predict)
    promote = sub.add_parser("promote", help="apply the promotion policy to the last run's report")
    promote.add_argument("--dry-run", action="store_true", help="explain what would happen; change nothing")
    promote.set_defaults(func=cmd_promote)
    rollback = sub.add_parser("rollback", help="move `champion` back to the version it replaced")
    rollback.add_argument("--reason", required=True, help="why (recorded on both versions)")
    rollback.set_defaults(func=cmd_rollback)
    sweep = sub.add_parser("sweep", help="train the candidates in parallel on Dask or Ray, then run the pipeline once")
    sweep.add_argument("--params", default="params.yaml", help="params file, e.g. params/pruning.yaml")
    sweep.add_argument("--workers", type=int, default=2, help="local workers (ignored with --address)")
    sweep.add_argument("--runner", choices=("dask", "ray", "local"), default="dask")
    sweep.add_argument("--address", help="an existing cluster: tcp://host:8786 (Dask) or ray://host:10001 (Ray)")
    sweep.add_argument("--no-pull", action="store_true", help="do not `dvc pull data.dvc` first")
    sweep.set_defaults(func=cmd_sweep)
    search = sub.add_parser("search", help="search recipes for the smallest, fastest model within the accuracy budget (Optuna)")
    search.add_argument("--params", default="params/search.yaml", help="a profile with a search: section (params/search.yaml)")
    search.add_argument("--trials", type=int, help="trials to run now (default: search.trials); a stored study resumes; "
                        "0: none, only the seeds owed and the final run (after changing candidates or the budget)")
    search.add_argument("--minutes", type=float, help="the whole search's time: no trial starts unless it and the front's seeds are "
                        "expected to end within it (default: search.minutes)")
    search.add_argument("--workers", type=int, default=1, help="trials trained at once (ignored with --address)")
    search.add_argument("--runner", choices=("dask", "ray", "local"), default="local")
    search.add_argument("--address", help="an existing cluster: tcp://host:8786 (Dask) or ray://host:10001 (Ray)")
    search.add_argument("--no-pull", action="store_true", help="do not `dvc pull data.dvc` first")
    search.set_defaults(func=cmd_search)
    schedule = sub.add_parser("schedule", help="serve the pipeline on a cron schedule (Prefect deployment)")
    schedule.add_argument("--params", default="params.yaml", help="params file the scheduled runs use")
    schedule.add_argument("--cron", help="cron expression (default: schedule.cron in params)")
    schedule.set_defaults(func=cmd_schedule)
    gc = sub.add_parser("gc", help="retention: archive old registry versions and collect unused DVC cache")
    gc.add_argument("--keep-versions", type=int, default=10, help="newest registry versions to keep (default 10)")
    gc.add_argument("--keep-git-history", action="store_true", help="also keep cache used by any git commit")
    gc.add_argument("--prefix-days", type=float, default=30,
                    help="also remove recipe prefixes (runtime.cache_dir/prefixes) unused this many days (default 30); "
                         "those of other code go whatever their age")
    gc.add_argument("--dry-run", action="store_true", help="say what would go; remove and tag nothing")
    gc.set_defaults(func=cmd_gc)
    args = parser.parse_args(argv)
    # The temporary Prefect server's usage telemetry: nothing a pipeline needs, and an error in the
    # log wherever the network is closed.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's temporary server gets 20 s to start by default; beside a training job on 2 cores
    # it needed more, and the run failed before doing anything.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if args.debug:
        os.environ[DEBUG_ENV] = "1"  # the stages print the tracebacks of their errors too
    elif args.command in ("run", "sweep", "search", "schedule"):
        _hide_prefect_user_error_tracebacks()
    try:
        args.func(args)
    except Exception as err:
        user_error = _user_error(err) or _server_start_error(err)
        if user_error is None:
            raise  # a bug: its traceback says where
        if args.debug:
            traceback.print_exc()
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
