"""Running the DVC stage graph from Prefect, one task per stage, in the order DVC gives.

DVC owns the graph and the caching (`dvc repro --single-item STAGE` runs or skips one stage);
Prefect owns retries, failure isolation and observability. Only failures a retry can fix
(a lock held by another process, a locked database) are retried.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from textcompress.errors import TextcompressError

TRANSIENT_MARKERS = ("database is locked", "Unable to acquire lock", "is locked by", "Resource temporarily unavailable")


def project_env() -> dict:
    """The environment for DVC subprocesses: dvc.yaml's `python` is this interpreter."""
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


class StageFailed(TextcompressError):
    """A deterministic failure: retrying would fail the same way."""


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


@task(retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=_transient_only, task_run_name="dvc repro {stage}")
def run_dvc_stage(stage: str, project_dir: str, upstream: bool = False, threads: int | None = None) -> str:
    """Run (or skip, when DVC says it is up to date) one stage, with the stages it depends on when
    `upstream` (a fresh sweep workspace). `threads` caps the stage's compute threads (through the
    environment, so params and DVC's run-cache are unchanged). Returns "ran" or "cached"."""
    only = [] if upstream else ["--single-item"]
    env = project_env()
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
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
    if code != 0:
        text = b"".join(tail).decode(errors="replace")
        # The script's own message ("error: ...") or the exception line of a traceback says most.
        lines = text.splitlines()
        error = next((l for l in reversed(lines) if l.startswith("error:") or re.match(r"^[\w.]+(Error|Exception)\b", l)),
                     next((l for l in reversed(lines) if l.startswith("ERROR:")), text.strip()[-500:]))
        kind = TransientStageFailure if any(m in text for m in TRANSIENT_MARKERS) else StageFailed
        raise kind(f"stage {stage} failed: {error}")
    return "ran" if ran else "cached"


def remove_outputs(project_dir: Path, outs: list[str]) -> None:
    """Clear a failed candidate's stale outputs, so nothing downstream reads an older result."""
    for out in outs:
        path = project_dir / out
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            os.remove(path)
