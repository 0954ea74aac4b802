"""Running the DVC stage graph from Prefect, one task per stage, in the order DVC gives.

DVC owns the graph and the caching (`dvc repro --single-item STAGE` runs or skips one stage);
Prefect owns retries, failure isolation and observability. Only failures a retry can fix
(a lock held by another process, a locked database) are retried.

Why a stage failed comes as data: each stage script writes a StageError record to the file
$TEXTCOMPRESS_ERROR_FILE names (a temporary file per run, outside the project, so DVC never sees
it). Only without a record (DVC failed before the command ran, or a signal killed the process)
does the message come from the exit status and DVC's own ERROR line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from textcompress.catalog import CHECKPOINTS, REPORTS  # CHECKPOINTS: the state a rerun of `teach` resumes from
from textcompress.errors import ERROR_FILE_ENV, StageError, TextcompressError
from textcompress.workspace import project_env

TRANSIENT_MARKERS = ("database is locked", "Unable to acquire lock", "is locked by", "Resource temporarily unavailable")
SIGNAL_HINTS = {signal.SIGKILL: "out of memory?", signal.SIGTERM: "stopped from outside?", signal.SIGINT: "interrupted"}


class StageFailed(TextcompressError):
    """A deterministic failure: retrying would fail the same way. `record` says why, as data."""

    def __init__(self, message: str, record: StageError | None = None):
        super().__init__(message, fix=record.fix if record else None)
        self.record = record
        if record is not None:
            self.path, self.line, self.key = record.file, record.line, record.key


class TransientStageFailure(StageFailed):
    """Another process held a lock, or similar: worth retrying."""


@dataclass
class StageInfo:
    name: str  # DVC's address, e.g. "compress@distill-l2"
    candidate: str | None  # the candidate of a foreach stage, or None for shared stages
    outs: list[str] = field(default_factory=list)
    downstream: list[str] = field(default_factory=list)


def stage_order(project_dir: Path) -> list[StageInfo]:
    """Pipeline stages (not .dvc data files) in an order that respects dependencies."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = [s for s in nx.topological_sort(graph.reverse(copy=False)) if getattr(s, "cmd", None)]
        result = []
        for stage in order:
            name = stage.addressing
            candidate = name.split("@", 1)[1] if "@" in name else None
            downstream = [d.addressing for d in nx.ancestors(graph, stage) if getattr(d, "cmd", None)]
            result.append(StageInfo(name, candidate, [o.def_path for o in stage.outs], downstream))
        return result


def pipeline_is_up_to_date(project_dir: Path) -> bool:
    """True when DVC reports no stage or data file changed: nothing a scheduled run could redo."""
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project_dir, capture_output=True,
                          text=True, env=project_env())
    if done.returncode != 0:
        return False  # let the run itself say what is wrong
    return json.loads(done.stdout or "{}") == {}


def _transient_only(task, task_run, state) -> bool:
    return isinstance(state.data, TransientStageFailure) or "TransientStageFailure" in (state.message or "")


def _signal_of(code: int | None) -> signal.Signals | None:
    """The signal that ended a process with exit status `code`: negative from Python's subprocess,
    128+N from a shell."""
    if code is None or code == 0:
        return None
    number = -code if code < 0 else code - 128 if 128 < code <= 128 + 64 else None
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


def explain_failure(stage: str, returncode: int, record: StageError | None, output: str,
                    resumable: bool = False) -> StageError:
    """Why `dvc repro STAGE` failed, as a record. The stage's own record when it wrote one; else,
    when a signal killed the command (the exit status DVC reports, or DVC's own), which signal, and
    for `teach` with a checkpoint (`resumable`) that a rerun resumes there; else DVC's own ERROR
    line. Never the stage's last output (the tail of a progress bar says nothing)."""
    if record is not None:
        return record
    # DVC's ERROR line may continue a line a killed stage left unfinished (a progress bar's tail).
    errors = [line[line.index("ERROR:"):].strip() for line in output.splitlines() if "ERROR:" in line]
    dvc_error = errors[-1] if errors else None
    exited = re.search(r"exited with (-?\d+)", dvc_error or "")  # DVC's report of the command's status
    command_code = int(exited.group(1)) if exited else None
    killed = _signal_of(returncode if returncode < 0 else command_code)
    if killed is not None:
        hint = SIGNAL_HINTS.get(killed)
        message = f"killed by signal {int(killed)} ({killed.name}{': ' + hint if hint else ''})"
        fix = "free memory (fewer parallel workers, a smaller batch_size or max_length) and rerun" \
            if killed == signal.SIGKILL else "rerun"
        if resumable:
            message += f"; rerun resumes from the last checkpoint in {CHECKPOINTS}/"
        return StageError(stage, "killed", message, fix=fix, exit_code=command_code if command_code is not None else returncode)
    if dvc_error:
        message = dvc_error.removeprefix("ERROR:").strip()
    else:
        message = f"dvc repro exited with {returncode} (see DVC's output above)"
    return StageError(stage, "dvc", message, exit_code=returncode)


def stage_failure(stage: str, record: StageError, output: str) -> StageFailed:
    """The exception for a failed stage: TransientStageFailure (retried) when another process held a
    lock or the like, which DVC (or an unexpected error in the stage) says; a user error never is."""
    said = {"dvc": output, "internal": record.message}.get(record.kind, "")
    kind = TransientStageFailure if any(m in said for m in TRANSIENT_MARKERS) else StageFailed
    fix = f". Fix: {record.fix}" if record.fix and ". Fix: " not in record.message else ""
    return kind(f"stage {stage} failed: {record.message}{fix}", record)


def _has_checkpoint(project_dir: str) -> bool:
    folder = Path(project_dir) / CHECKPOINTS
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


@contextmanager
def reports_kept_on_failure(project_dir: str, outs: Sequence[str], scratch: Path):
    """DVC deletes a stage's outputs before running it: unless the block ends normally, put back
    what the last good run left of them under reports/ (and remove what this run left there)."""
    kept = [out for out in outs if Path(out).parts[:1] == REPORTS.parts]
    backup = Path(scratch) / "kept"
    for out in kept:
        if (Path(project_dir) / out).is_file():
            (backup / out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(project_dir) / out, backup / out)
    done = False
    try:
        yield
        done = True
    finally:
        if not done:
            for out in kept:
                path = Path(project_dir) / out
                if (backup / out).is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(shutil.copy2(backup / out, path.with_name(path.name + ".kept")), path)
                elif path.is_file():
                    path.unlink()


@task(retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=_transient_only, task_run_name="dvc repro {stage}")
def run_dvc_stage(stage: str, project_dir: str, upstream: bool = False, threads: int | None = None,
                  outs: Sequence[str] = ()) -> str:
    """Run (or skip, when DVC says it is up to date) one stage, with the stages it depends on when
    `upstream` (a fresh sweep workspace). `threads` caps the stage's compute threads (through the
    environment, so params and DVC's run-cache are unchanged). `outs` (the stage's outputs): those
    under reports/ are put back as they were if the stage fails. Returns "ran" or "cached"; raises
    StageFailed (TransientStageFailure when a retry may help) carrying the StageError record."""
    only = [] if upstream else ["--single-item"]
    env = project_env()
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory(prefix="textcompress-stage-") as scratch, \
            reports_kept_on_failure(project_dir, outs, Path(scratch)):
        error_file = Path(scratch) / "error.json"
        env[ERROR_FILE_ENV] = str(error_file)
        process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *only, stage], cwd=project_dir,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        tail: deque[bytes] = deque(maxlen=40)
        ran = False  # DVC says "Running stage" when it runs the command, nothing of the kind when cached
        while chunk := process.stdout.read1(4096):  # pass progress bars through as they come
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            ran = ran or b"Running stage" in (tail[-1][-32:] if tail else b"") + chunk
            tail.append(chunk)
        code = process.wait()
        if code == 0:
            return "ran" if ran else "cached"
        record = StageError.read(error_file)
        text = b"".join(tail).decode(errors="replace")
        resumable = stage.split("@")[0] == "teach" and _has_checkpoint(project_dir)
        raise stage_failure(stage, explain_failure(stage, code, record, text, resumable), text)


def remove_outputs(project_dir: Path, outs: list[str]) -> None:
    """Clear a failed candidate's stale outputs, so nothing downstream reads an older result."""
    for out in outs:
        path = project_dir / out
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            os.remove(path)
