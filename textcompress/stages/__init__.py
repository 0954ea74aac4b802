"""DVC stage entry points. Each is a small script: it reads its section of params.yaml,
takes paths on the command line, and writes only its declared outputs (atomically).

A stage that fails says why twice: one line on stderr (`error: ...`, or the traceback of an
unexpected exception), and, when $TEXTCOMPRESS_ERROR_FILE is set (the flow sets it per stage, to a
temporary file outside the project, so it is no DVC output), a StageError record there that the
flow reads instead of the stage's output. Exit status: 2 for a user error, 1 for anything else."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable

import torch

from textcompress.config import load_params
from textcompress.errors import DEBUG_ENV, ERROR_FILE_ENV, DiskFullError, StageError, TextcompressError


def write_error_record(err: BaseException, stage: str, argv: list[str]) -> StageError:
    """The record of `err`, written to $TEXTCOMPRESS_ERROR_FILE when that is set. Writing it never
    hides the error itself: a record that cannot be written is said on stderr and skipped."""
    record = StageError.from_exception(err, stage, argv)
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        try:
            record.write(path)
        except OSError as write_err:
            print(f"(could not write the error record to {path}: {write_err})", file=sys.stderr)
    return record


def run_stage(description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
              body: Callable[[dict, argparse.Namespace], None], argv=None) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    module = sys.modules.get(body.__module__)  # under `python -m`, __main__; its spec has the real name
    stage = getattr(getattr(module, "__spec__", None), "name", body.__module__).rsplit(".", 1)[-1]
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        params = load_params(args.params)
        threads = params["runtime"]["threads"]
        if threads:
            torch.set_num_threads(int(threads))
        body(params, args)
    except Exception as err:  # noqa: BLE001 - a user error (or a full disk) exits 2; anything else is a bug
        user_error = err if isinstance(err, TextcompressError) else DiskFullError.of(err)
        if user_error is not None:
            write_error_record(user_error, stage, argv)
            if os.environ.get(DEBUG_ENV):
                traceback.print_exc()
            print(f"error: {user_error}", file=sys.stderr)
            sys.exit(2)
        # a bug: recorded as "internal", traceback kept, exit 1
        write_error_record(err, stage, argv)
        traceback.print_exc()
        sys.exit(1)
