"""Can a benchmark's numbers be trusted? The machine's load around the timed loops, and a verdict.

Interleaving spreads a shared machine's noise over all candidates, but a machine that is busy
throughout still distorts the ratios (a small model suffers less from a busy cache than a large
one). So the benchmark records, around its timed loops: the load average before and at the end;
the CPU time other processes used meanwhile (the machine's busy time less this process's own, from
psutil), in cores and as a share of the cores; and how far each candidate's p50 moved between
consecutive rounds of sentences. `verdict` compares them with params.yaml's `benchmark:` limits.
"""

from __future__ import annotations

import os
import time

import numpy as np
import psutil

ROUNDS = 5  # consecutive blocks of the timed sentences whose p50s are compared


def _machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used, summed over cores. Guest time is
    already counted in user time; steal (another virtual machine) counts as busy."""
    times = psutil.cpu_times()
    return sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq", "steal"))


def _own_cpu_s() -> float:
    times = psutil.Process().cpu_times()  # every thread of this process, ONNX Runtime's pool included
    return times.user + times.system


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not offered on this platform
        return None


class MachineLoad:
    """`with MachineLoad() as load: ...`; then `load.result` holds what others did meanwhile."""

    def __enter__(self) -> MachineLoad:
        self.load_before = _load_average()
        self._start = (time.perf_counter(), _machine_busy_s(), _own_cpu_s())
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._start[0]
        busy, own = _machine_busy_s() - self._start[1], _own_cpu_s() - self._start[2]
        cores = psutil.cpu_count() or 1
        others = max(0.0, busy - own)  # the two clocks tick apart, so a quiet machine may read a hair below 0
        self.result = {"cores": cores, "wall_s": round(wall, 3), "load_average_before": self.load_before,
                       "load_average_after": _load_average(), "own_cpu_cores": round(own / wall, 3),
                       "other_cpu_cores": round(others / wall, 3), "other_cpu_share": round(others / wall / cores, 3)}


def round_spread(samples_ns: list[int], rounds: int = ROUNDS) -> float | None:
    """(max − min) / median of the p50s of `rounds` consecutive blocks of the samples: how much one
    candidate's latency moved during the run. None when a block would hold fewer than 3 samples."""
    if len(samples_ns) < 3 * rounds:
        return None
    p50s = [float(np.median(block)) for block in np.array_split(np.asarray(samples_ns, dtype=float), rounds)]
    return round((max(p50s) - min(p50s)) / float(np.median(p50s)), 4)


def verdict(benchmark: dict, limits: dict) -> dict:
    """Noisy or not, and each cause in words, from a benchmark's recorded numbers (its
    `machine_load`, each candidate's `p50_round_spread`) and the `benchmark:` limits of params.yaml."""
    load, threads = benchmark["machine_load"], benchmark["environment"]["threads"]
    spreads = {name: row.get("p50_round_spread") for name, row in benchmark["candidates"].items()}
    causes = []
    if load["other_cpu_share"] > limits["max_other_cpu_share"]:
        causes.append(f"other processes used {load['other_cpu_cores']:.1f} of {load['cores']} cores during timing "
                      f"(limit: {limits['max_other_cpu_share']:.0%} of the cores, benchmark.max_other_cpu_share)")
    if load.get("load_average_after"):
        # The 1-minute load at the end covers the timing (and a little before); the benchmark's own threads are taken out.
        others_per_core = max(0.0, load["load_average_after"][0] - threads) / load["cores"]
        if others_per_core > limits["max_other_load_per_core"]:
            causes.append(f"the load average of other work was {others_per_core:.2f} per core "
                          f"(limit {limits['max_other_load_per_core']}, benchmark.max_other_load_per_core)")
    measured = {name: s for name, s in spreads.items() if s is not None}
    if measured and limits["max_round_spread"] is not None:
        worst = max(measured, key=measured.get)
        if measured[worst] > limits["max_round_spread"]:
            causes.append(f"{worst}'s p50 moved by {measured[worst]:.0%} between rounds "
                          f"(limit {limits['max_round_spread']:.0%}, benchmark.max_round_spread)")
    return {"noisy": bool(causes), "causes": causes,
            "limits": {key: limits[key] for key in ("max_other_cpu_share", "max_other_load_per_core", "max_round_spread")}}
