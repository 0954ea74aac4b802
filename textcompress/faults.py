"""Fault injection: make the pipeline fail on purpose at an exact moment, to see that a failure
loses nothing and that the next run recovers (tests/faults/ does this; so can a user, on a copy).

Set $TEXTCOMPRESS_FAULT to one or more `ACTION@POINT=WHERE` (comma-separated); unset, this
module does nothing. A point fires when its WHERE ends with the one given.

    kill@train-step=teach:12            SIGKILL the process at step 12 of teach's training (the
                                        `desc` of any training loop: distill, prune_magnitude, ...)
    enospc@write=artifacts/onnx/int8    an atomic write of that output fails: no space left on device
    kill@promote=champion               SIGKILL the run just after it moved the `champion` alias
                                        (`challenger` when the pick did not win), before it recorded why

Each point is one call of `hit` in the library: training.py (train-step), fileio.py (write),
decisions/registry.py (promote).
"""

from __future__ import annotations

import errno
import os
import signal

FAULT_ENV = "TEXTCOMPRESS_FAULT"
ACTIONS = ("kill", "enospc")


def planned(spec: str | None = None) -> list[tuple[str, str, str]]:
    """The (action, point, where) triples $TEXTCOMPRESS_FAULT (or `spec`) asks for."""
    spec = os.environ.get(FAULT_ENV, "") if spec is None else spec
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        action, _, rest = item.partition("@")
        point, _, where = rest.partition("=")
        if action not in ACTIONS or not point:
            raise ValueError(f"${FAULT_ENV}: {item!r} is not ACTION@POINT=WHERE with ACTION one of {ACTIONS}")
        faults.append((action, point, where))
    return faults


def hit(point: str, where: object) -> None:
    """The pipeline reached `point` at `where`: carry out the fault planned there, if any."""
    if FAULT_ENV not in os.environ:
        return
    here = str(where).replace(os.sep, "/")
    for action, planned_point, planned_where in planned():
        if planned_point != point or not here.endswith(planned_where):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
