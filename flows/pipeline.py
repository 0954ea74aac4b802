"""The textcompress pipeline as a Prefect flow.

    pull data -> DVC stages (prepare, teach, teacher_logits, compress/export/evaluate per
    candidate, benchmark, report) -> log candidates to MLflow -> promote -> push artifacts

The stage graph lives in dvc.yaml only; this flow runs it stage by stage so that a failed
candidate is reported as failed while the others go on, and then does what DVC should not:
talk to MLflow, move the champion alias, push to the user's remote.

Run: textcompress run [--params params/quick.yaml]   (or: python -m flows.pipeline)
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow, get_run_logger

from tasks.notify import notify
from tasks.run_cache import pull_run_cache, restore_stage, team_remote
from tasks.stages import StageFailed, pipeline_is_up_to_date, remove_outputs, run_dvc_stage, stage_order
from tasks.tracking import log_to_mlflow, promote_champion, pull_data, push_artifacts
from textcompress.catalog import Catalog
from textcompress.config import load_params, with_step_lists
from textcompress.fileio import write_json
from textcompress.models.checkpoints import check_sources


def _notify_failure(flow, flow_run, state) -> None:
    root = Path(flow_run.parameters.get("project_dir", ".")).resolve()
    try:
        cfg = load_params(root / "params.yaml")["notify"]
    except Exception:  # noqa: BLE001 - bad params are the failure being reported; use the environment only
        cfg = {"events": ["failure"]}
    notify(cfg, "failure", f"textcompress run {flow_run.name} failed", str(state.message), root)


@flow(name="textcompress-pipeline", log_prints=True, on_failure=[_notify_failure])
def pipeline(project_dir: str = ".", pull: bool = True, skip_unchanged: bool = False) -> dict:
    """`skip_unchanged` (scheduled runs): after pulling the data, stop if DVC says nothing changed.
    A shared stage that fails fails the run with its StageFailed (the CLI prints its message); a
    candidate that fails is reported (failures.json, run.json's `errors`) while the others go on."""
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    os.chdir(root)  # DVC and relative MLflow paths are project-relative
    params = load_params(root / "params.yaml")
    check_sources(with_step_lists(params))  # a checkpoint that cannot load fails here, before any stage changes anything
    timings: dict[str, float] = {}
    team = team_remote(params["pipeline"]["push_remote"])  # where runs are pushed, and found
    shared_runs = 0  # run-cache entries from the team's remote: stages a teammate already ran
    if pull:
        logger.info(pull_data(str(root)))
        shared_runs, said = pull_run_cache(str(root), params["pipeline"]["push_remote"])
        logger.info(said)
    if skip_unchanged and Catalog(root).RUN.is_file() and pipeline_is_up_to_date(root):
        logger.info("neither data nor params nor code changed since the last run: nothing to do")
        return {"skipped": True, "reason": "nothing changed"}

    # The last run's summary goes until this run writes its own: a run stopped midway (killed,
    # power lost) must not leave an older run.json to describe outputs it did not make.
    Catalog(root).RUN.unlink(missing_ok=True)
    stages = stage_order(root)
    failures: dict[str, str] = {}  # candidate -> why, the string the report shows
    errors: dict[str, dict] = {}  # candidate -> the failed stage's error record (kind, file, line, fix, ...)
    statuses: dict[str, str] = {}
    failures_file = Catalog(root).FAILURES
    write_json(failures_file, {})  # a dep of `report` (dvc.yaml): this run's failures, none yet
    for stage in stages:
        if stage.candidate in failures:
            statuses[stage.name] = "skipped"
            continue
        if stage.name == "benchmark" and failures:
            write_json(failures_file, failures)  # report marks these rows failed, with the reason
        started = time.time()
        if shared_runs:  # fetch what a teammate's run of this stage made, so DVC restores it
            logger.info("%s: %s", stage.name, restore_stage(str(root), stage.name, team))
        try:
            statuses[stage.name] = run_dvc_stage(stage.name, str(root), outs=stage.outs)
        except StageFailed as err:
            if stage.candidate in (None, "teacher"):
                raise  # shared stages and the teacher's row (every ratio's reference) have no fallback
            failures[stage.candidate] = str(err)
            record = err.record.summary() if err.record else {"message": str(err)}
            errors[stage.candidate] = {"stage": stage.name, **record}
            statuses[stage.name] = "failed"
            stale = stage.outs + [o for s in stages if s.name in stage.downstream and s.candidate == stage.candidate for o in s.outs]
            remove_outputs(root, stale)
            logger.warning("candidate %s failed; the others go on: %s", stage.candidate, err)
        timings[stage.name] = round(time.time() - started, 1)

    versions = log_to_mlflow(str(root), params)
    decision = promote_champion(str(root), params, versions)
    pushed = push_artifacts(str(root), params["pipeline"]["push_remote"])
    summary = {"stages": statuses, "seconds": timings, "failed": failures, "errors": errors, "versions": versions,
               "promotion": decision, "push": pushed}
    write_json(Catalog(root).RUN, summary)
    if decision["promoted"]:
        notify(params["notify"], "promotion", f"{decision['challenger']} is the new champion of {decision['registered_model']}",
               decision["reason"], root)
    notify(params["notify"], "completion", "textcompress run finished",
           f"failed candidates: {sorted(failures) or 'none'}; promotion: {decision['reason']}", root)
    logger.info("\n%s", Catalog(root).CANDIDATES_MD.read_text())
    logger.info("promotion: %s%s", decision["reason"],
                f" -> {decision['challenger']} is champion" if decision["promoted"] else "")
    logger.info("report: %s  ONNX files: %s  MLflow: %s (mlflow ui --backend-store-uri %s)", Catalog(root).REPORTS,
                Catalog(root).ONNX, params["mlflow"]["tracking_uri"], params["mlflow"]["tracking_uri"])
    return summary


if __name__ == "__main__":
    pipeline()
