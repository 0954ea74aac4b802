"""Where a run happens. The project's own params.yaml runs in the project. A profile
(`--params params/quick.yaml`) runs in `runs/<profile>/`: a copy of the project's files with the
profile merged into its params.yaml, its own dvc.lock and reports, and the project's DVC cache
and MLflow registry. So a profile run changes no tracked file of the project, and a second run
of it, or of the default, finds every stage it already ran in the shared cache.

The sweep's per-candidate workspaces (`.sweep/<candidate>/`) are made the same way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from textcompress.config import load_params
from textcompress.fileio import atomic_path

RUNS = "runs"  # profile workspaces, under the project; ignored by git and DVC
SWEEPS = ".sweep"  # a sweep's per-candidate workspaces, under the project (or under a profile's workspace)
RUN_PRODUCTS = ("params.yaml", "dvc.lock", "reports/")  # a workspace's own: never overwritten from the project


def project_env() -> dict:
    """The environment for DVC subprocesses: dvc.yaml's `python` is this interpreter."""
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def _dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, check=check,
                          env=project_env())


def cache_dir(project: Path) -> Path:
    """The DVC cache the project uses: the configured one, else .dvc/cache."""
    out = _dvc(project, "cache", "dir", check=False)
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else project / ".dvc" / "cache"


def project_files(project: Path) -> list[str]:
    """The project's tracked and untracked (not ignored) files, as git lists them, never another
    workspace's nor Python's bytecode, whatever the project's .gitignore says: a sweep makes its
    workspaces side by side, and one half-copied would be copied again, or vanish mid-copy."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=project, capture_output=True,
                            check=True).stdout.decode().split("\0")
    return [name for name in listed if name and Path(name).parts[0] not in (RUNS, SWEEPS)
            and "__pycache__" not in Path(name).parts and (project / name).is_file()]


def make_workspace(project: Path, workspace: Path, keep: tuple[str, ...] = ()) -> Path:
    """Copy the project's files into `workspace` (its own git repository), except those under `keep`
    that the workspace already has; share the project's DVC cache; make relative remote URLs
    absolute (they are relative to the project's .dvc/); check out the data from the cache."""
    project, workspace = project.resolve(), workspace.resolve()
    for name in project_files(project):
        target = workspace / name
        if any(name == k or name.startswith(k) for k in keep) and target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / name, target)
    if not (workspace / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    _dvc(workspace, "cache", "dir", "--local", str(cache_dir(project)))
    # A local remote's URL is relative to the .dvc/ it is written in; DVC resolves it (RelPath).
    from dvc.config_schema import RelPath
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        local = {n: str(r["url"]) for n, r in repo.config["remote"].items() if isinstance(r.get("url"), RelPath)}
    for name, url in local.items():
        _dvc(workspace, "remote", "modify", "--local", name, "url", url)
    _dvc(workspace, "checkout", "-q", *[p.name for p in project.glob("*.dvc") if p.is_file()], check=False)
    return workspace


def profile_params(chosen: str | Path, project: Path) -> tuple[Path, dict]:
    """Where a run with params file `chosen` happens, and its params: the project and its own
    params.yaml, or runs/<file's stem>/ and that file merged with the defaults, logging to the
    project's MLflow registry (each profile names its own registered model)."""
    project = project.resolve()
    chosen = Path(chosen)
    if not chosen.is_absolute() and (project / chosen).exists():  # relative to the project, else to here
        chosen = project / chosen
    params = load_params(chosen)
    if chosen.resolve() == (project / "params.yaml").resolve():
        return project, params
    uri = params["mlflow"]["tracking_uri"]
    if uri.startswith("sqlite:///") and not uri[len("sqlite:///"):].startswith("/"):
        params["mlflow"]["tracking_uri"] = "sqlite:///" + str(project / uri[len("sqlite:///"):])
    return project / RUNS / chosen.stem, params


def run_directory(chosen: str | Path, project: Path) -> Path:
    """The directory a run with params file `chosen` happens in (see profile_params), made ready:
    a profile's workspace is created or refreshed and its params.yaml written. The file is
    validated first, so a bad one makes and changes nothing."""
    where, params = profile_params(chosen, project)
    if where == project.resolve():
        return where
    make_workspace(project, where, keep=RUN_PRODUCTS)
    merged = f"# Written by `textcompress run --params {chosen}` (the profile merged with the defaults).\n"
    merged += yaml.safe_dump(params, sort_keys=False)
    with atomic_path(where / "params.yaml") as tmp:
        tmp.write_text(merged)
    return where
