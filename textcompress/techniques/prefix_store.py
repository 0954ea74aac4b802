"""Recipe prefixes computed once: candidates whose recipes begin with the same steps share them.

`compress@B`, whose recipe begins with steps that `compress@A` ran, loads A's model after those
steps and runs only its own remaining ones. An entry is keyed by everything the prefix's result
depends on: the contents of the teacher, the prepared data and the teacher's logits, the seed,
the steps with their full arguments, where and how the arithmetic runs (device, threads, torch
version, precision) and the code that computes it (the compress stage's code deps in dvc.yaml). The store lives in
runtime.cache_dir beside the teacher's cached states, outside DVC, so profile runs and the sweep's
per-candidate workspaces share it too; the key is what keeps it honest, and what a candidate
loads is bit for bit what it would have computed, so `dvc repro` sees the same outputs either way.

An entry holds the model, what the steps changed in the context (a trimmed vocabulary's teacher,
tokenizer and re-tokenized splits) and the global random state after the last step, so the steps
after it draw what they would have drawn. Only prefixes that another candidate of the same params
begins with are stored. An entry is published whole (a folder renamed into place) with its
checksum: a torn or corrupt one is never loaded, it is removed and computed again. While one
process computes a prefix others wait for it (a lock per key: the sweep runs candidates at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import random
import shutil
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from textcompress.fileio import atomic_new_dir, read_json, write_json
from textcompress.techniques.base import Step, TechniqueContext
from textcompress.training import resolve_device

# Bump when what an entry holds, or how it is restored, changes meaning.
STORE_VERSION = 1
PREFIXES = "prefixes"  # the store's folder under runtime.cache_dir
STATE_FILE, ENTRY_FILE = "state.pt", "entry.json"
# The code a prefix's result depends on, relative to the textcompress package: the code deps of the
# compress stage in dvc.yaml (tests/techniques/test_prefix_store.py holds the two together).
CODE = ("data.py", "training.py", "models", "techniques", "deploy/quantization.py", "deploy/export.py",
        "deploy/inference.py", "stages/compress.py")


def _digest_files(paths: Sequence[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def tree_digest(path: str | Path) -> str:
    """A file's contents, or a folder's files' names and contents."""
    path = Path(path)
    if path.is_file():
        return _digest_files([path], path.parent)
    return _digest_files([p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts], path)


def code_digest() -> str:
    package = Path(__file__).resolve().parents[1]
    files = []
    for name in CODE:
        path = package / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return _digest_files(files, package)


def signature(step: Step) -> list:
    """A step as its result depends on it: its name and all its arguments (defaults filled; an int
    given for a float argument counts as that float)."""
    defaults = step.technique.defaults
    args = {k: float(v) if isinstance(defaults.get(k), float) and isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in step.args.items()}
    return [step.name, args]


def shared_lengths(steps: Sequence[Step], others: Sequence[Sequence[Step]]) -> set[int]:
    """The lengths k of the prefixes steps[:k] that another recipe's steps also begin with."""
    mine = [signature(s) for s in steps]
    theirs = [[signature(s) for s in other[: len(mine)]] for other in others]
    return {k for k in range(1, len(mine) + 1) if any(t[:k] == mine[:k] for t in theirs if len(t) >= k)}


def device_class(device: str | None) -> str:
    resolved = resolve_device(device)
    return f"cuda ({torch.cuda.get_device_name(resolved)})" if resolved.type == "cuda" else resolved.type


class PrefixStore:
    """Entries `<root>/<key>/` of one run's inputs: `teacher`, `prepared` and `logits` are the paths
    the candidate reads, `ctx` the context its steps get."""

    def __init__(self, root: str | Path, teacher: Path, prepared: Path, logits: Path, ctx: TechniqueContext):
        self.root, self.ctx = Path(root), ctx
        self.inputs = {"teacher": Path(teacher), "prepared": Path(prepared), "teacher_logits": Path(logits)}

    @cached_property
    def base(self) -> str:
        """What every prefix of this run depends on besides its steps (hashed once, on first use)."""
        described = {"version": STORE_VERSION, "code": code_digest(),
                     **{name: tree_digest(path) for name, path in self.inputs.items()},
                     "seed": self.ctx.seed, "max_length": self.ctx.max_length, "device": device_class(self.ctx.device),
                     "threads": torch.get_num_threads(), "torch": torch.__version__, "precision": self.ctx.precision,
                     "teacher_states_cached": self.ctx.cache_dir is not None}
        return json.dumps(described, sort_keys=True)

    def key(self, steps: Sequence[Step]) -> str:
        payload = json.dumps([self.base, [signature(s) for s in steps]], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    @contextlib.contextmanager
    def claim(self, key: str):
        """Held while this process computes the prefix `key`: another one wanting it waits, then loads it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{key}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, key: str) -> dict | None:
        """The entry `key` (its state and its steps' details), or None when there is none or it is
        incomplete or corrupt (then it is removed, so that it is computed and written again)."""
        folder = self.root / key
        if not folder.exists():
            return None
        try:
            entry = read_json(folder / ENTRY_FILE)
            if entry.get("key") != key or tree_digest(folder / STATE_FILE) != entry["sha256"]:
                raise ValueError("its checksum or key does not match")
            state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or set(state) != {"model", "context", "random"}:
                raise ValueError("it does not hold a prefix's state")
        except Exception as err:  # noqa: BLE001 - whatever is wrong with it, it is computed again
            print(f"prefix store: entry {key} is unusable ({type(err).__name__}: {err}); computing it again", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        (folder / ENTRY_FILE).touch()  # last use, for `textcompress gc`
        return {**entry, "state": state}

    def save(self, key: str, steps: Sequence[Step], details: Sequence[dict], model, ctx: TechniqueContext,
             start: TechniqueContext, candidate: str) -> bool:
        """Publish the state after `steps` (`start`: the context before the first step). Returns
        whether it was stored: a failure to store is said and the candidate goes on."""
        try:
            changed = {name: getattr(ctx, name) for name in ("teacher", "train", "validation")
                       if getattr(ctx, name) is not getattr(start, name)}
            if "teacher" not in changed and _shares_storage(model, ctx.teacher):
                raise ValueError("the model shares tensors with the teacher, which the entry does not hold")
            if ctx.tokenizer_file != start.tokenizer_file:
                changed["tokenizer"] = Path(ctx.tokenizer_file).read_bytes()
            with atomic_new_dir(self.root / key) as tmp:
                torch.save({"model": model, "context": changed, "random": random_state()}, tmp / STATE_FILE)
                write_json(tmp / ENTRY_FILE, {"key": key, "sha256": tree_digest(tmp / STATE_FILE), "written_by": candidate,
                                              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                              "code": json.loads(self.base)["code"], "steps": [signature(s) for s in steps],
                                              "details": list(details)})
            return True
        except Exception as err:  # noqa: BLE001 - the store saves time; it must not fail the candidate
            print(f"prefix store: could not store {key} ({type(err).__name__}: {err})", file=sys.stderr)
            return False


def _shares_storage(model, teacher) -> bool:
    pointers = {t.data_ptr() for t in teacher.state_dict().values() if t.numel()}
    return any(t.numel() and t.data_ptr() in pointers for t in model.state_dict().values())


def random_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore(entry: dict, ctx: TechniqueContext):
    """The entry's model; the context and the random state as they were after its last step."""
    state = entry["state"]
    for name, value in state["context"].items():
        if name == "tokenizer":
            ctx.tokenizer_file = Path(ctx.workdir) / f"prefix-{entry['key']}-tokenizer.json"
            ctx.tokenizer_file.write_bytes(value)
        else:
            setattr(ctx, name, value)
    set_random_state(state["random"])
    return state["model"]


def run_steps(steps: Sequence[Step], model, ctx: TechniqueContext, store: PrefixStore | None = None,
              shared: set[int] = frozenset(), candidate: str = "",
              after: Callable[[int, object, TechniqueContext], None] | None = None) -> tuple[object, list[dict]]:
    """Apply `steps` to `model` in order; returns (model, each step's record). With a store, the
    longest stored prefix among the `shared` lengths is loaded instead of computed, and a shared
    prefix this run computes is stored. Each record's `prefix_store` says which (and the key).
    `after(done, model, ctx)`, when given, is called each time `done` steps are done (a loaded
    prefix counts as its steps at once); what it raises stops the steps there."""
    import copy

    start = copy.copy(ctx)  # what the steps may replace in ctx, as it was before them
    records: list[dict] = []
    done = 0
    while done < len(steps):
        if store is not None:
            loaded = next(((k, e) for k in sorted(shared, reverse=True) if k > done
                           and (e := store.load(store.key(steps[:k]))) is not None), None)
            if loaded is not None:
                model, done = _take(loaded, steps, done, ctx, records, candidate)
                if after is not None:
                    after(done, model, ctx)
                continue
        step, length = steps[done], done + 1
        key = store.key(steps[:length]) if store is not None and length in shared else None
        with store.claim(key) if key else contextlib.nullcontext():
            entry = store.load(key) if key else None
            if entry is not None:  # another process computed it while this one waited
                model, done = _take((length, entry), steps, done, ctx, records, candidate)
                if after is not None:
                    after(done, model, ctx)
                continue
            print(f"{candidate}: {step.name} {dict(step.args)}")
            model, details = step.technique.apply(model, dict(step.args), ctx)
            records.append({**step.record(details), "prefix_store": {"source": "computed"}})
            if key and store.save(key, steps[:length], [r["details"] for r in records], model, ctx, start, candidate):
                records[-1]["prefix_store"]["stored_as"] = key
        done = length
        if after is not None:
            after(done, model, ctx)
    return model, records


def _take(loaded: tuple[int, dict], steps: Sequence[Step], done: int, ctx: TechniqueContext, records: list[dict],
          candidate: str):
    length, entry = loaded
    for step, details in zip(steps[done:length], entry["details"][done:length]):
        print(f"{candidate}: {step.name} {dict(step.args)} (from the prefix store: {entry['key']}, "
              f"written by {entry['written_by']} at {entry['created']})")
        records.append({**step.record(details), "prefix_store": {"source": "store", "key": entry["key"],
                                                                  "written_by": entry["written_by"],
                                                                  "created": entry["created"]}})
    return _restore(entry, ctx), length


def prune(root: str | Path, max_age_days: float, dry_run: bool = False) -> dict:
    """Remove what no run of this code can load: half-written leftovers and unreadable entries,
    entries of other code (a code change changes every key), and entries unused for `max_age_days`.
    Returns what went (or would go) and why, and the bytes freed."""
    root = Path(root)
    removed: dict[str, list[str]] = {"incomplete": [], "other code": [], "unused": []}
    freed, kept = 0, 0
    if not root.is_dir():
        return {"removed": removed, "bytes": 0, "kept": 0}
    current, cutoff = code_digest(), time.time() - max_age_days * 86400
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith(".") and folder.stat().st_mtime > time.time() - 3600:
            continue  # being written now, perhaps
        try:
            entry = read_json(folder / ENTRY_FILE)
            why = "other code" if entry["code"] != current else \
                "unused" if (folder / ENTRY_FILE).stat().st_mtime < cutoff else None
            if not (folder / STATE_FILE).is_file():
                why = "incomplete"
        except (OSError, ValueError, KeyError, TypeError):
            why = "incomplete"  # a writer's leftover (.<key>.tmp-*) or a torn entry
        if why is None:
            kept += 1
            continue
        removed[why].append(folder.name)
        freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    if not dry_run:
        for lock in root.glob("*.lock"):  # a key's lock, once nothing computes it and its entry is gone
            if not (root / lock.stem).is_dir():
                with open(lock, "a") as handle, contextlib.suppress(BlockingIOError):
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    lock.unlink()
    return {"removed": removed, "bytes": freed, "kept": kept}
