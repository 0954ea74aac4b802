"""DVC stage entry points. Each is a small script: it reads its section of params.yaml,
takes paths on the command line, and writes only its declared outputs (atomically)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch

from textcompress.config import load_params
from textcompress.errors import TextcompressError


def run_stage(description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
              body: Callable[[dict, argparse.Namespace], None], argv=None) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        threads = params["runtime"]["threads"]
        if threads:
            torch.set_num_threads(int(threads))
        body(params, args)
    except TextcompressError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
