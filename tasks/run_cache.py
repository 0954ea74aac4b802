"""Sharing DVC's run-cache through the team's remote, so a teammate's clone restores a stage that
someone already ran (same code, data and params) instead of running it again.

DVC keeps one run-cache entry per run of a stage (its deps, params and outputs by hash). `dvc push
--run-cache` sends the entries, but of the objects they name only those `dvc push` sends anyway:
not the outputs declared `cache: false` (teach's and evaluate's metrics), without which DVC cannot
restore the stage. And `dvc repro --pull` fetches a missing object from the default remote only,
which is the team's read-only data remote. So:

- `push_uncached_outputs` sends this run's `cache: false` outputs that the local cache holds
  (DVC committed them there with the run-cache entry);
- `pull_run_cache` fetches the entries from the team's remote at the start of a run;
- `restore_stage` restores one stage from its entry before the flow runs it, fetching the objects
  from the team's remote; `dvc repro` then finds the stage cached and only records it in dvc.lock.

The team's remote is `pipeline.push_remote`: where runs are pushed is where they are found. The
read-only data remote (READ_ONLY_REMOTES) holds no run-cache and is never asked.
A failure to pull is never a failed run: the stage then runs as it would have.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from prefect import task

READ_ONLY_REMOTES = {"shared"}  # the team's data remote: never pushed to, and it holds no run-cache


def team_remote(remote: str | None) -> str | None:
    """The remote that holds the team's run-cache: the user's push_remote, unless it is read-only."""
    return remote if remote and remote not in READ_ONLY_REMOTES else None


def push_uncached_outputs(project_dir: str | Path, remote: str) -> int:
    """Send to `remote` the objects of this workspace's `cache: false` outputs that the local cache
    holds; returns how many were sent (already there or not)."""
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        wanted = [out.hash_info for stage in repo.index.stages for out in stage.outs
                  if not out.use_cache and out.hash_info and out.hash_info.value]
        held = [h for h in wanted if repo.cache.local.exists(h.value)]
        if held:
            repo.cloud.push(held, remote=remote)
        return len(held)


@task(task_run_name="dvc pull --run-cache")
def pull_run_cache(project_dir: str, remote: str | None) -> tuple[int, str]:
    """Fetch the run-cache entries `remote` holds: (how many, what to log)."""
    if not team_remote(remote):
        why = f"remote {remote!r} is the read-only data remote" if remote else "no pipeline.push_remote configured"
        return 0, f"run-cache: not pulled ({why})"
    from dvc.repo import Repo

    try:
        with Repo(project_dir) as repo, repo.lock:
            entries = repo.stage_cache.pull(remote)
    except Exception as err:  # noqa: BLE001 - a remote that cannot be read only means the stages run
        return 0, f"run-cache: not pulled from {remote!r} ({err.__class__.__name__}: {err}); every stage runs as usual"
    return len(entries), f"run-cache: {len(entries)} entries from {remote!r}"


@contextmanager
def _working_directory(folder: str):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def restore_stage(project_dir: str, stage: str, remote: str) -> str:
    """Restore `stage`'s outputs from its run-cache entry, the objects fetched from `remote`:
    "restored", or why not (no entry for these deps and params, objects missing, an error)."""
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotFoundError

    try:
        # DVC resolves a stage's paths from the working directory: the project's (the flow's already).
        with _working_directory(project_dir), Repo(project_dir, config={"core": {"remote": remote}}) as repo, repo.lock:
            (found,) = repo.stage.collect(stage)
            repo.stage_cache.restore(found, pull=True)
    except RunCacheNotFoundError:
        return "not in the run-cache"
    except Exception as err:  # noqa: BLE001 - `dvc repro` runs the stage and reports what is wrong
        return f"not restored ({err.__class__.__name__}: {err})"
    return "restored"
