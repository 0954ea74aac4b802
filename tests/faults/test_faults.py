"""Faults injected into the real pipeline (the `textcompress` console script: real Prefect, DVC and
MLflow on the tiny project), and what each leaves: the message the user sees, the state on disk
and in the registry, and what the next run does. One project goes through the faults in turn, so
each "next run" is also the next fault's run:

    Prefect's server slow to start -> SIGKILL in teach -> SIGKILL in compress + full disk in export
    -> SIGKILL during promotion -> corrupted DVC cache (and the recovery of the promotion)
    -> MLflow registry locked by another process (its lock file, then SQLite itself)

Kills are real SIGKILLs of the real process, at a moment $TEXTCOMPRESS_FAULT names
(textcompress/faults.py); locks are held by real other processes; the cache is corrupted byte by
byte. tests/faults/README.md tabulates what these tests observe."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.tiny_project import build_tiny_project
from textcompress.faults import FAULT_ENV

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

COMMAND = str(Path(sys.executable).parent / "textcompress")
MODEL = "tiny-faults"
CHECKPOINT_EVERY = 5
TEACH_KILLED_AT = 25  # of 57 steps (3 epochs of 19 batches): the last checkpoint is at step 20


def textcompress(project: Path, *args: str, fault: str | None = None, **env) -> subprocess.CompletedProcess:
    """The console script on `project`, running the project's copy of the code, in its own
    session: what a SIGKILL leaves running (Prefect's temporary server outlives the run) is stopped."""
    environ = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": str(project), "PREFECT_HOME": str(project.parent / "prefect-home"), **env}
    environ.pop("PREFECT_API_URL", None)  # each run starts its temporary server, as a user's does
    environ.pop(FAULT_ENV, None)
    if fault:
        environ[FAULT_ENV] = fault
    # Output to files, not pipes: a server outliving a killed run would hold a pipe open.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen([COMMAND, "--project", str(project), *args], stdout=out, stderr=err, text=True,
                                   env=environ, start_new_session=True)
        try:
            process.wait(timeout=900)
        finally:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())


def error_line(stderr: str) -> str:
    """The CLI's one-line error (Prefect may log its server stopping after it)."""
    return next((line for line in reversed(stderr.splitlines()) if line.startswith("error: ")), "")


def snapshot(project: Path) -> dict[str, float]:
    """The project's files and their times; not the bytecode Python writes as it imports the project's code."""
    return {str(p.relative_to(project)): p.stat().st_mtime for p in project.rglob("*")
            if ".git" not in p.parts and "__pycache__" not in p.parts and p.is_file()}


def leftovers(project: Path) -> list[str]:
    """Temporary files of atomic writes (`.NAME.tmp-...`) anywhere in the project's outputs."""
    return [str(p) for folder in ("artifacts", "reports") for p in (project / folder).rglob("*.tmp-*")]


def run_summary(project: Path) -> dict:
    return json.loads((project / "reports" / "run.json").read_text())


def registry(project: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow.MlflowClient()


def champion(project: Path):
    from mlflow.exceptions import MlflowException

    try:
        return registry(project).get_model_version_by_alias(MODEL, "champion")
    except MlflowException:
        return None


def cache_blob(project: Path, out: str, relpath: str, lock: dict) -> Path:
    """The DVC cache file holding `relpath` of the directory output `out`, found through its .dir listing."""
    cache = project / ".dvc" / "cache" / "files" / "md5"
    digest = next(o["md5"] for o in lock["outs"] if o["path"] == out)
    listing = json.loads((cache / digest[:2] / digest[2:]).read_text())
    md5 = next(entry["md5"] for entry in listing if entry["relpath"] == relpath)
    return cache / md5[:2] / md5[2:]


def corrupt(blob: Path) -> None:
    blob.chmod(0o644)  # DVC keeps cache files read-only
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return build_tiny_project(tmp_path_factory.mktemp("faults"), sections={
        "promotion": {"registered_model": MODEL, "max_accuracy_drop": 10.0},
        "runtime": {"checkpoint_every": CHECKPOINT_EVERY, "cache_dir": str(tmp_path_factory.mktemp("teacher-states"))}})


@pytest.fixture(scope="module")
def slow_server_run(project):
    before = snapshot(project)
    # The server needs several seconds to start; one second is "slow to start" for this run.
    run = textcompress(project, "run", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    return run, before, snapshot(project)


@pytest.fixture(scope="module")
def teach_killed(project, slow_server_run):
    return textcompress(project, "run", fault=f"kill@train-step=teach:{TEACH_KILLED_AT}")


@pytest.fixture(scope="module")
def compress_killed_export_disk_full(project, teach_killed):
    return textcompress(project, "run", fault="kill@train-step=distill:2,enospc@write=artifacts/onnx/int8-dynamic")


@pytest.fixture(scope="module")
def promotion_killed(project, compress_killed_export_disk_full):
    return textcompress(project, "run", fault="kill@promote=champion")


@pytest.fixture(scope="module")
def cache_corrupted(project, promotion_killed):
    """The data and one candidate's bundle corrupted in the DVC cache, their workspace copies gone
    (a fresh checkout sharing the cache), then a plain run."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["compress@int8-dynamic"]
    data = yaml.safe_load((project / "data.dvc").read_text())
    # steps.json: a file of this output alone (its weights share one cache file with the teacher's,
    # and DVC then reruns teach, the first stage whose output it finds corrupt).
    blobs = [cache_blob(project, "artifacts/compressed/int8-dynamic", "steps.json", lock),
             cache_blob(project, "data", "train.tsv", data)]
    for blob in blobs:
        corrupt(blob)
    train = (project / "data" / "train.tsv").read_bytes()
    for folder in ("artifacts/compressed/int8-dynamic", "data"):
        subprocess.run(["rm", "-rf", str(project / folder)], check=True)
    versions = len(registry(project).search_model_versions(f"name='{MODEL}'"))
    return textcompress(project, "run"), blobs, train, versions


def test_a_slow_prefect_server_stops_the_run_before_anything_changes(slow_server_run):
    run, before, after = slow_server_run
    assert run.returncode == 2 and "Traceback" not in run.stderr
    said = error_line(run.stderr)
    assert "Prefect's temporary server did not start within 1 s" in said
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=600" in said and "Fix:" in said
    assert after == before  # no stage ran, nothing pulled, no registry created


def test_sigkill_in_teach_says_so_and_keeps_the_checkpoint(project, teach_killed):
    run = teach_killed
    assert run.returncode == 2 and "Traceback" not in run.stderr
    last = error_line(run.stderr)
    assert last.startswith("error: stage teach failed: killed by signal 9 (SIGKILL")
    assert "rerun resumes from the last checkpoint in artifacts/checkpoints/" in last and "Fix:" in last
    assert (project / "artifacts" / "checkpoints" / "teach.pt").is_file()
    assert not (project / "artifacts" / "teacher").exists() and not leftovers(project)
    assert "teach" not in yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert not (project / "reports" / "run.json").exists()


def test_the_next_run_resumes_teach_and_a_killed_candidate_and_a_full_disk_fail_alone(project,
                                                                                        compress_killed_export_disk_full):
    run = compress_killed_export_disk_full
    assert run.returncode == 0, run.stderr[-3000:]
    output = run.stdout + run.stderr
    resumed = re.search(r"teach: resuming from the checkpoint at step (\d+) of (\d+)", output)
    assert resumed and 0 < int(resumed.group(1)) < TEACH_KILLED_AT, output[-3000:]
    assert not any((project / "artifacts" / "checkpoints").iterdir())  # cleared once teach finished
    summary = run_summary(project)
    assert summary["stages"]["prepare"] == "cached" and summary["stages"]["teach"] == "ran"
    assert len(json.loads((project / "artifacts" / "teacher_metrics.json").read_text())["history"]) == 3

    # SIGKILL in compress@distill-l2: that candidate fails with the signal; nothing of it is left.
    assert summary["stages"]["compress@distill-l2"] == "failed"
    killed = summary["errors"]["distill-l2"]
    assert killed["kind"] == "killed" and "killed by signal 9 (SIGKILL" in killed["message"]
    assert "candidate distill-l2 failed; the others go on: stage compress@distill-l2 failed: killed by signal 9" in output
    assert not (project / "artifacts" / "compressed" / "distill-l2").exists()

    # ENOSPC while export@int8-dynamic writes: a user error naming the output and the fix; no half-written folder.
    assert summary["stages"]["export@int8-dynamic"] == "failed"
    full = summary["errors"]["int8-dynamic"]
    assert full["kind"] == "DiskFullError" and full["file"] == "artifacts/onnx/int8-dynamic"
    assert "No space left on device" in full["message"] and "free disk space" in full["fix"]
    assert "Traceback" not in output
    assert not (project / "artifacts" / "onnx" / "int8-dynamic").exists() and (project / "artifacts" / "compressed" / "int8-dynamic").is_dir()
    assert not (project / "artifacts" / "metrics" / "int8-dynamic.json").exists() and not leftovers(project)

    rows = {r["name"]: r for r in json.loads((project / "reports" / "candidates.json").read_text())["rows"]}
    assert rows["distill-l2"]["status"] == rows["int8-dynamic"]["status"] == "failed"
    assert not summary["promotion"]["promoted"] and champion(project) is None


def test_sigkill_during_promotion_leaves_a_whole_alias_and_no_stale_summary(project, promotion_killed):
    run = promotion_killed
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
    output = run.stdout + run.stderr
    # Only the failed candidates' stages ran again.
    assert "Running stage 'compress@distill-l2'" in output and "Running stage 'export@int8-dynamic'" in output
    for cached in ("teach", "compress@int8-dynamic", "prepare"):
        assert f"Running stage '{cached}'" not in output
    pick = json.loads((project / "reports" / "candidates.json").read_text())["pick"]
    moved = champion(project)
    assert moved is not None and moved.tags["candidate"] == pick
    assert "promotion.decision" not in moved.tags  # killed after the alias moved, before the tags
    assert not (project / "reports" / "run.json").exists()  # the previous run's summary does not pose as this one's

    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")  # the registered model is whole
    assert set(model.predict(pd.DataFrame({"text": ["the movie was great ."]}))["label"]) <= {0, 1, "0", "1"}


def test_the_next_run_records_the_promotion_and_dvc_refuses_corrupted_cache_files(project, cache_corrupted):
    run, blobs, train, versions_before = cache_corrupted
    assert run.returncode == 0, run.stderr[-3000:]
    summary = run_summary(project)
    # The corrupted data came again from the remote. The corrupted bundle was not checked out: the
    # project's push_remote holds this run's run-cache, so the stage was restored from there (the
    # remote's good copy), and nothing ran.
    assert (project / "data" / "train.tsv").read_bytes() == train
    output = run.stdout + run.stderr
    assert summary["stages"]["compress@int8-dynamic"] == "cached" and "compress@int8-dynamic: restored" in output
    assert "Running stage 'compress@int8-dynamic'" not in output
    ran = {name for name, status in summary["stages"].items() if status == "ran"}
    assert ran == set(), summary["stages"]  # the same bytes: nothing downstream reran either
    for blob in blobs:
        assert hashlib.md5(blob.read_bytes()).hexdigest() == blob.parent.name + blob.name
    # The killed promotion: the same version is champion, its decision now recorded; no duplicate versions.
    client = registry(project)
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before
    now = champion(project)
    assert str(now.version) == summary["promotion"]["challenger_version"]
    assert now.tags["promotion.decision"] == "promoted" and "stopped before it recorded" in now.tags["promotion.reason"]
    assert json.loads((project / "reports" / "promotion.json").read_text())["challenger_version"] == str(now.version)


def hold(code: str, project: Path) -> subprocess.Popen:
    """Another process holding a lock until killed; returns once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", code, str(project / "mlflow.db")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


HOLD_REGISTRY_LOCK = ("import fcntl, sys, time; f = open(sys.argv[1][:-3] + '.lock', 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
                      "print('held', flush=True); time.sleep(600)")
HOLD_SQLITE = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
               "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(600)")


def test_a_registry_held_by_another_pipeline_is_waited_for_and_a_locked_database_said_plainly(project, cache_corrupted):
    tags_before = dict(champion(project).tags)

    said = f"waiting for {project / 'mlflow.lock'}: another pipeline is writing to the registry"
    holder = hold(HOLD_REGISTRY_LOCK, project)
    with tempfile.TemporaryFile("w+") as err:
        try:
            waiting = subprocess.Popen([COMMAND, "--project", str(project), "promote"], stdout=subprocess.PIPE,
                                       stderr=err, text=True, env={**os.environ, "PYTHONPATH": str(project)})
            deadline = time.monotonic() + 300
            while said not in (err.seek(0) or err.read()) and waiting.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            assert waiting.poll() is None  # it waits for the lock: neither done nor failed
        finally:
            holder.kill()
        out, _ = waiting.communicate(timeout=300)
        err.seek(0)
        stderr = err.read()
    assert waiting.returncode == 0, stderr[-2000:]
    assert said in stderr and "already the champion" in out

    holder = hold(HOLD_SQLITE, project)
    try:
        locked = textcompress(project, "promote")
    finally:
        holder.kill()
    assert locked.returncode == 2 and "Traceback" not in locked.stderr
    last = error_line(locked.stderr)
    assert last.startswith(f"error: {project / 'mlflow.db'}: the MLflow database is locked by another process")
    assert "Fix:" in last
    assert dict(champion(project).tags) == tags_before  # nothing changed

    again = textcompress(project, "promote")
    assert again.returncode == 0 and "already the champion" in again.stdout
