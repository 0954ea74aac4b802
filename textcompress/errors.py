"""Errors a user can cause. Each says what was wrong, where, and what to do.

Every error a user can cause is a TextcompressError: the CLI prints its message alone (the
traceback only with `--debug`), and a DVC stage that fails writes a StageError record that the
flow reads to say why, instead of reading the stage's output. The classes that replace a
ValueError are ValueErrors too, so callers that catch ValueError keep working.
"""

from __future__ import annotations

import errno
import json
import os
import traceback
from dataclasses import asdict, dataclass, fields
from pathlib import Path

ERROR_FILE_ENV = "TEXTCOMPRESS_ERROR_FILE"  # where a failing stage writes its StageError record (set by the flow)
DEBUG_ENV = "TEXTCOMPRESS_DEBUG"  # set by `textcompress --debug`: stages print tracebacks of user errors too
STOP_BELOW_ENV = "TEXTCOMPRESS_STOP_BELOW"  # a search trial's early stop: compress stops below this selection accuracy


def _message(where: str | None, problem: str, fix: str | None) -> str:
    text = f"{where}: {problem}" if where else problem
    return f"{text}. Fix: {fix}" if fix else text


def _rebuild(cls, args, state):
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class TextcompressError(Exception):
    """Base class: the CLI prints these without a traceback. The structured fields (None where
    an error has none) are what a stage's error record reads."""

    path: str | None = None  # the file that is wrong (a data file, params.yaml)
    line: int | None = None  # its line, where one is known
    key: str | None = None  # the params key that is wrong
    problem: str | None = None  # what is wrong, without where and fix
    fix: str | None = None  # what the user can do about it
    record_kind: str | None = None  # the StageError kind, when not the class name
    details: dict | None = None  # figures a program reads from the StageError record (StoppedEarly's)

    def __init__(self, message: str = "", *, fix: str | None = None):
        super().__init__(message)
        if fix is None and ". Fix: " in message:  # the convention "what was wrong. Fix: what to do"
            fix = message.rsplit(". Fix: ", 1)[1]
        self.fix = fix

    def __reduce__(self):  # survives pickling (a task runner's process boundary) with its fields
        return _rebuild, (self.__class__, self.args, self.__dict__)


class DataError(TextcompressError):
    """A data file is unreadable or invalid. The message names the file and line."""

    def __init__(self, path, problem: str, fix: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(_message(where, problem, fix), fix=fix)
        self.path, self.line, self.problem = str(path), line, problem


class ParamsError(TextcompressError):
    """params.yaml is invalid. The message names the file and the key."""

    def __init__(self, path, key: str, problem: str, fix: str):
        super().__init__(_message(f"{path}: `{key}`", problem, fix), fix=fix)
        self.path, self.key, self.problem = str(path), key, problem


class ModelError(TextcompressError, ValueError):
    """A model cannot be built or changed as asked (its configuration, or what a step needs of it)."""

    def __init__(self, problem: str, fix: str | None = None, *, where: str | None = None):
        super().__init__(_message(where, problem, fix), fix=fix)
        self.problem = problem


class RecipeError(TextcompressError, ValueError):
    """A candidate's recipe step cannot work: its arguments, or its place in the recipe. `step`
    is the technique (`distill`, `share_layers`, ...), which starts the message."""

    def __init__(self, step: str | None, problem: str, fix: str | None = None):
        super().__init__(_message(step, problem, fix), fix=fix)
        self.step, self.problem = step, problem


class PolicyError(TextcompressError, ValueError):
    """A promotion or evaluation setting cannot be applied to the results at hand."""

    def __init__(self, problem: str, fix: str | None = None, *, key: str | None = None):
        super().__init__(_message(f"`{key}`" if key else None, problem, fix), fix=fix)
        self.key, self.problem = key, problem


class DiskFullError(TextcompressError):
    """The disk (or the user's quota) filled up while a stage wrote. Not a bug: atomic writes
    leave nothing half-written, so freeing space and rerunning is all it takes."""

    CODES = (errno.ENOSPC, errno.EDQUOT)

    def __init__(self, path, strerror: str):
        fix = "free disk space there (`df -h` shows how much is left), then rerun: the stage runs again"
        super().__init__(_message(str(path), f"{strerror} while writing; nothing was written there", fix), fix=fix)
        self.path, self.problem = str(path), strerror

    @classmethod
    def of(cls, err: BaseException) -> DiskFullError | None:
        """`err` as a DiskFullError when it is the operating system's "disk full", else None."""
        if not isinstance(err, OSError) or err.errno not in cls.CODES:
            return None
        return cls(err.filename or os.getcwd(), err.strerror or os.strerror(err.errno))


class StoppedEarly(TextcompressError):
    """A search trial stopped on purpose, not a failure of its recipe: after its first training step
    its accuracy on the selection split was below $TEXTCOMPRESS_STOP_BELOW, so the rest did not run
    and nothing was written. Its record (kind `stopped_early`) carries the figures in `details`:
    accuracy, threshold (fractions) and steps_not_run (step names, in order)."""

    record_kind = "stopped_early"

    def __init__(self, accuracy: float, threshold: float, steps_not_run: list[str]):
        not_run = ", ".join(steps_not_run) or "none"
        problem = (f"stopped early: accuracy {accuracy:.4f} on the selection split after the first training step is below "
                   f"the threshold {threshold:.4f} ({STOP_BELOW_ENV}); steps not run: {not_run}")
        fix = f"nothing is wrong with the recipe's input; unset {STOP_BELOW_ENV} to train it whole"
        super().__init__(_message(None, problem, fix), fix=fix)
        self.problem = problem
        self.details = {"accuracy": accuracy, "threshold": threshold, "steps_not_run": list(steps_not_run)}


@dataclass
class StageError:
    """Why a DVC stage failed, as data: what a stage script writes to $TEXTCOMPRESS_ERROR_FILE
    when it fails, and what the flow reads instead of the stage's output.

    kind: the exception's class name for a user error (DataError, ParamsError, ...), or its
    `record_kind` ("stopped_early"); "internal" for any other exception (a bug: the traceback says
    where); the flow uses "killed" (a signal ended the process) and "dvc" (DVC failed before or
    around the command) when there is no record."""

    stage: str  # the stage script (prepare, teach, compress, ...) or DVC's stage address
    kind: str  # see above; "stopped_early" for StoppedEarly (a search trial stopped on purpose)
    message: str
    argv: list[str] | None = None
    file: str | None = None
    line: int | None = None
    key: str | None = None
    fix: str | None = None
    exit_code: int | None = None
    traceback: str | None = None
    details: dict | None = None  # figures for a program: StoppedEarly's accuracy, threshold, steps_not_run

    @classmethod
    def from_exception(cls, err: BaseException, stage: str, argv: list[str] | None = None) -> StageError:
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        if isinstance(err, TextcompressError):
            return cls(stage, err.record_kind or type(err).__name__, str(err), argv, err.path, err.line, err.key, err.fix, 2,
                       text, err.details)
        first_line = (str(err).strip().splitlines() or [""])[0]  # the traceback keeps the rest
        return cls(stage, "internal", f"{type(err).__name__}: {first_line}".rstrip(": "), argv,
                   fix="this is a bug in textcompress, not in your data or params: report it with the traceback above",
                   exit_code=1, traceback=text)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> StageError:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def summary(self) -> dict:
        """The record without its traceback: what a run's report keeps."""
        return {k: v for k, v in asdict(self).items() if k != "traceback" and v is not None}

    def write(self, path: str | Path) -> None:
        """Write atomically (a temporary file, then rename): a reader never sees half a record."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str | Path) -> StageError | None:
        """The record at `path`, or None when there is none (or it cannot be read)."""
        try:
            return cls.from_json(Path(path).read_text())
        except (OSError, ValueError, TypeError):
            return None
