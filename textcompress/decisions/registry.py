"""MLflow: one run per candidate, one registered model with a version per candidate, and
promotion of the `champion` alias by the policy (`textcompress.decisions.promotion.PromotionPolicy`).

`promote_run` is the one promotion service: the Prefect flow and `textcompress promote` both call
it. It measures a champion from another run in this run (`textcompress.decisions.champion`), decides under
the registry lock, and records the decision.

Runs are keyed by a fingerprint (the ONNX bytes, the recipe, the data and the metrics), so a
re-run with nothing changed finds its versions instead of adding duplicates. The alias only
moves after the challenger beat the current champion measured in this same run, and never on
latency from a benchmark flagged noisy (unless `benchmark.allow_noisy`); the decision and its
reasons are tags on the version and `reports/promotion.json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from textcompress import faults
from textcompress.catalog import Catalog
from textcompress.decisions.champion import ChampionNotMeasured, measure_champion, paired_test
from textcompress.errors import TextcompressError
from textcompress.fileio import read_json, write_json
from textcompress.deploy.inference import MODEL_FILE
from textcompress.decisions.promotion import PromotionPolicy, report_pick

CHAMPION, CHALLENGER = "champion", "challenger"
DEMOTED_TAG = "promotion.demoted"  # set by rollback: never promote this version again
METRIC_FIELDS = ("accuracy", "macro_f1", "f1", "accuracy_drop", "accuracy_drop_upper", "size_mb", "params", "latency_p50_ms",
                 "latency_p95_ms", "throughput_per_s", "peak_rss_mb", "parity_max_abs_diff", "label_agreement")
EXAMPLE_TEXTS = ["a gripping, beautifully acted film", "dull and far too long"]
EXAMPLE_PAIRS = ["a film that grips, beautifully acted", "the weather was fine"]


def tracking_uri(uri: str, project_dir: Path) -> str:
    """Relative SQLite paths are relative to the project, wherever the flow was started."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str((Path(project_dir) / uri[len(prefix):]).resolve())
    return uri


@contextlib.contextmanager
def registry_lock(tracking_uri: str, timeout_s: float = 600.0):
    """Serialise registry writers that share one SQLite file (two scheduled pipelines at once):
    check-then-create of versions and decide-then-move of the alias must not interleave.
    A tracking server serialises its clients itself, so other URIs need no lock."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        yield
        return
    database = Path(tracking_uri[len(prefix):])
    lock_path = database.with_suffix(".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TextcompressError(f"{lock_path}: another pipeline has held the registry lock for {timeout_s:.0f} s. "
                                            "Fix: wait for it to finish, or remove the file if no pipeline is running")
                if deadline - time.monotonic() > timeout_s - 0.3:  # said once: a silent wait looks like a hang
                    print(f"waiting for {lock_path}: another pipeline is writing to the registry "
                          f"(up to {timeout_s:.0f} s)", file=sys.stderr, flush=True)
                time.sleep(0.2)
        try:
            yield
        except Exception as err:  # noqa: BLE001 - MLflow's or SQLAlchemy's, depending on where SQLite said it
            if "database is locked" not in str(err):
                raise
            # Another process (not a pipeline: those take the lock above) holds SQLite's own lock.
            raise TextcompressError(f"{database}: the MLflow database is locked by another process (SQLite waited "
                                    "20 s); nothing was changed. Fix: stop what holds it (`fuser` shows which process), "
                                    "or wait for it, then rerun") from err
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(row: dict, onnx_dir: Path, data_version: str) -> str:
    payload = json.dumps({"name": row["name"], "onnx": file_digest(onnx_dir / MODEL_FILE), "recipe": row["recipe"], "data": data_version,
                          "accuracy": row["accuracy"]}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def provenance(project_dir: Path) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_dir, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    lock = project_dir / "dvc.lock"
    return {"git_commit": commit, "dvc_lock_sha256": file_digest(lock)[:16] if lock.is_file() else "none"}


SERVING_PACKAGES = ("mlflow", "onnxruntime", "tokenizers", "pandas", "numpy")  # what the served model imports


def serving_requirements() -> list[str]:
    """The served model's pip requirements, pinned to the versions this run used, so the
    environment MLflow builds for it scores as this run did."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in SERVING_PACKAGES]


def ensure_experiment(client: MlflowClient, name: str) -> None:
    """Make `name` the active experiment, creating it with its artifacts beside a SQLite registry
    (mlruns/ next to mlflow.db), not under whichever directory first ran: a profile run in its
    workspace and a run in the project then keep their models in the same place."""
    uri = mlflow.get_tracking_uri()
    if client.get_experiment_by_name(name) is None and uri.startswith("sqlite:///"):
        artifacts = Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns"
        client.create_experiment(name, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(name)


def log_candidates(report: dict, onnx_root: Path, reports_dir: Path, registered_model: str, experiment: str,
                   project_dir: Path, data_version: str, max_length: int, pairs: bool = False) -> dict[str, str]:
    """Log every candidate that ran; return {candidate: registered model version}."""
    from textcompress.deploy.serving import OnnxTextModel

    client = MlflowClient()
    ensure_experiment(client, experiment)
    _ensure_registered_model(client, registered_model)
    # Versions as strings throughout: SQLite stores give ints, REST servers strings.
    existing = {v.tags.get("fingerprint"): str(v.version) for v in client.search_model_versions(f"name='{registered_model}'")}
    tags = provenance(project_dir)
    versions = {}
    for row in report["rows"]:
        if row["status"] != "ok":
            continue
        fp = fingerprint(row, onnx_root / row["name"], data_version)
        if fp in existing:
            versions[row["name"]] = existing[fp]
            continue
        with mlflow.start_run(run_name=row["name"]) as run:
            mlflow.log_params({"recipe": json.dumps(row["recipe"])[:6000], "families": ",".join(row["families"]) or "none",
                               "data_version": data_version})
            mlflow.log_metrics({k: float(row[k]) for k in METRIC_FIELDS if row.get(k) is not None})
            for name in ("pareto.png", "candidates.md", "model_card.md", "attention_benchmark.png"):
                if (reports_dir / name).is_file():
                    mlflow.log_artifact(str(reports_dir / name))
            mlflow.log_dict(row, "candidate.json")
            mlflow.set_tags({**tags, "candidate": row["name"], "fingerprint": fp})
            with tempfile.TemporaryDirectory() as tmp:
                bundle = Path(tmp) / "model_dir"
                shutil.copytree(onnx_root / row["name"], bundle, ignore=shutil.ignore_patterns("export.json"))
                (bundle / "serving.json").write_text(json.dumps({"max_length": max_length, "threads": None, "pairs": pairs}))
                example = pd.DataFrame({"text": EXAMPLE_TEXTS, **({"text_pair": EXAMPLE_PAIRS} if pairs else {})})
                output = pd.DataFrame({"label": [report_labels(bundle)[0]] * 2, "probability": [0.5, 0.5], "empty_input": [False, False]})
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=OnnxTextModel(), artifacts={"model_dir": str(bundle)},
                    signature=infer_signature(example, output), input_example=example,
                    pip_requirements=serving_requirements(),
                    code_paths=[str(Path(__file__).parents[1])],  # the textcompress package
                )
        version = client.create_model_version(registered_model, info.model_uri, run_id=run.info.run_id,
                                              tags={**tags, "candidate": row["name"], "fingerprint": fp})
        versions[row["name"]] = str(version.version)
    return versions


def report_labels(bundle: Path) -> list:
    return json.loads((bundle / "labels.json").read_text())


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Compressed text classifiers from textcompress; `champion` serves.")


def current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def decide(report: dict, versions: dict[str, str], registered_model: str, policy: PromotionPolicy,
           compare_with_champion=None, paired_test=None) -> dict:
    """What promotion would do with this run's pick (the challenger), and why; changes nothing.

    `compare_with_champion(version) -> row` measures a champion that is not among this run's
    candidates (other data or code) side by side with the challenger; without it, or when it
    raises ChampionNotMeasured, such a champion is kept and the reason says why. `paired_test(champion_row) -> dict` compares the two on the same rows."""
    client = MlflowClient()
    challenger = report_pick(report)
    rows = {r["name"]: r for r in report["rows"]}
    decision = {"registered_model": registered_model, "challenger": challenger, "promoted": False}
    champion = current_champion(client, registered_model)
    decision["previous_champion"] = None if champion is None else {"version": str(champion.version), "candidate": champion.tags.get("candidate")}
    if challenger is None:
        decision["reason"] = "no candidate is eligible under the policy; champion unchanged"
        return decision
    version = versions.get(challenger)
    decision["challenger_version"] = version
    if version is None or not client.search_model_versions(f"name='{registered_model}' and version_number={version}"):
        raise TextcompressError(
            f"{mlflow.get_tracking_uri()}: this run's pick {challenger!r} (version {version} of {registered_model}) is not "
            "in this registry. Fix: run the pipeline here first (`make run`), so the registry holds this run's versions")
    if client.get_model_version(registered_model, version).tags.get(DEMOTED_TAG):
        decision.update(demoted=True, reason=f"version {version} was rolled back before and is not promoted again")
    elif (gate := policy.validation_gate(rows[challenger])) is not None:  # chosen on a selection split
        decision["reason"] = gate
    elif (noisy := policy.noisy_benchmark_gate((report.get("benchmark") or {}).get("noise"))) is not None:
        decision.update(noisy_benchmark=True, reason=noisy)
    elif champion is None:
        decision.update(promoted=True, reason="no champion yet")
    elif str(champion.version) == version:
        decision["reason"] = "the challenger is already the champion"
    else:
        champion_row = next((rows[n] for n, v in versions.items() if v == str(champion.version)), None)
        cause = ""
        if champion_row is None and compare_with_champion is not None:
            try:
                champion_row = compare_with_champion(champion)
            except ChampionNotMeasured as err:
                cause = f" ({err})"
        if champion_row is None:
            decision["reason"] = f"the current champion could not be measured in this run{cause}; kept"
        elif (noisy := policy.noisy_benchmark_gate(champion_row.get("benchmark_noise"))) is not None:
            decision.update(noisy_benchmark=True, reason="timing the current champion beside this run's teacher: " + noisy)
        else:
            test = paired_test(champion_row) if paired_test is not None else None
            decision["paired_test"] = test
            wins, why = policy.beats(rows[challenger], champion_row, test)
            decision.update(promoted=wins, reason=("beats the champion: " if wins else "does not beat the champion: ") + why)
    return decision


def promote(report: dict, versions: dict[str, str], registered_model: str, policy: PromotionPolicy,
            compare_with_champion=None, paired_test=None) -> dict:
    """Carry out `decide`: move `champion` (remembering the one it replaces, for rollback), keep
    `challenger` on a pick that did not win, and record the decision on the version."""
    decision = decide(report, versions, registered_model, policy, compare_with_champion, paired_test)
    version = decision.get("challenger_version")
    # A noisy benchmark changes nothing in the registry: a quiet rerun decides afresh.
    if version is None or decision.get("demoted") or decision.get("noisy_benchmark"):
        return decision
    client = MlflowClient()
    if decision["reason"] == "the challenger is already the champion":
        if client.get_model_version(registered_model, version).tags.get("promotion.decision"):
            return decision
        # A run that moved the alias was stopped before it said why: say it now.
        decision["reason"] += " (moved there by a run stopped before it recorded its decision)"
        decision["promoted"] = True
    # An order that a run stopped at any point leaves consistent: the rollback target before the
    # alias (a stop just after the move keeps it), the alias before the decision (a version never
    # says "promoted" while the alias did not move), which the next run records if it is missing.
    elif decision["promoted"]:
        if decision["previous_champion"]:
            client.set_model_version_tag(registered_model, version, "promotion.replaced_version", decision["previous_champion"]["version"])
        client.set_registered_model_alias(registered_model, CHAMPION, version)
        _delete_alias(client, registered_model, CHALLENGER)
    else:
        client.set_registered_model_alias(registered_model, CHALLENGER, version)
    faults.hit("promote", CHAMPION if decision["promoted"] else CHALLENGER)  # $TEXTCOMPRESS_FAULT=kill@promote=champion
    tags = {"promotion.decision": "promoted" if decision["promoted"] else "not promoted",
            "promotion.reason": decision["reason"][:5000]}
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, value)
    return decision


def promote_run(project_dir: Path | str, params: dict, versions: dict[str, str], dry_run: bool = False) -> dict:
    """Promotion for the run in `project_dir` (its reports/candidates.json and `versions`, as
    log_candidates returned them), under the registry lock: a champion from another run is
    measured in this run, and McNemar's test compares it with the pick. Writes
    reports/promotion.json; `dry_run` decides, explains and changes nothing."""
    root = Path(project_dir)
    uri = tracking_uri(params["mlflow"]["tracking_uri"], root)
    mlflow.set_tracking_uri(uri)
    report = read_json(Catalog(root).CANDIDATES_JSON)
    policy = PromotionPolicy.from_params(params["promotion"], teacher=report.get("teacher", "teacher"),
                                         allow_noisy=params["benchmark"]["allow_noisy"])
    pick = report_pick(report)
    act = decide if dry_run else promote
    with registry_lock(uri):
        decision = act(report, versions, params["promotion"]["registered_model"], policy,
                       compare_with_champion=lambda version: measure_champion(root, params, version),
                       paired_test=lambda champion_row: paired_test(root, pick, champion_row))
    if not dry_run:
        write_json(Catalog(root).PROMOTION, decision)
    return decision


ARCHIVED_TAG = "retention.archived"


def archive_old_versions(registered_model: str, keep: int, dry_run: bool = False) -> dict:
    """Tag every version but the `keep` newest as archived (a scheduled job may then delete them),
    never one that holds the `champion` or `challenger` alias, nor the version a rollback would
    restore. Returns what it archived and what it protected."""
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{registered_model}'")
    except MlflowException as err:
        raise TextcompressError(f"{registered_model}: cannot list its versions ({err}). Fix: check mlflow.tracking_uri") from err
    newest_first = sorted(versions, key=lambda v: int(v.version), reverse=True)
    protected = {str(v.version): f"newest {keep}" for v in newest_first[:keep]}
    for alias in (CHAMPION, CHALLENGER):
        try:
            aliased = client.get_model_version_by_alias(registered_model, alias)
        except MlflowException:
            continue
        protected[str(aliased.version)] = alias
        restore = aliased.tags.get("promotion.replaced_version")
        if alias == CHAMPION and restore:
            protected[restore] = "rollback target"
    archived = [str(v.version) for v in newest_first
                if str(v.version) not in protected and v.tags.get(ARCHIVED_TAG) != "true"]
    if not dry_run:
        for version in archived:
            client.set_model_version_tag(registered_model, version, ARCHIVED_TAG, "true")
    return {"registered_model": registered_model, "archived": archived, "protected": protected, "dry_run": dry_run}


def rollback(registered_model: str, reason: str) -> dict:
    """Move `champion` back to the version it replaced; tag the demoted version so that later
    scheduled runs do not promote it again."""
    client = MlflowClient()
    champion = current_champion(client, registered_model)
    if champion is None:
        raise TextcompressError(f"{registered_model} has no champion to roll back. Fix: run the pipeline first")
    previous = champion.tags.get("promotion.replaced_version")
    if not previous:
        raise TextcompressError(f"{registered_model}: champion version {champion.version} replaced no earlier champion, "
                                "so there is nothing to roll back to. Fix: set the alias by hand with "
                                "`MlflowClient().set_registered_model_alias`")
    client.set_registered_model_alias(registered_model, CHAMPION, previous)
    client.set_model_version_tag(registered_model, str(champion.version), DEMOTED_TAG, reason or "rolled back")
    client.set_model_version_tag(registered_model, previous, "promotion.reason", f"restored by rollback of version {champion.version}: {reason}")
    return {"registered_model": registered_model, "demoted": str(champion.version), "champion": previous, "reason": reason}


def _delete_alias(client: MlflowClient, name: str, alias: str) -> None:
    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException:
        pass  # there was none
