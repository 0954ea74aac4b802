"""Tests for textcompress.deploy.noise: the load measurement sees real busy processes, and the
verdict follows its documented limits on recorded numbers (a quiet machine cannot be promised here)."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager

import psutil
import pytest

from textcompress.config import DEFAULTS
from textcompress.deploy.noise import ROUNDS, MachineLoad, round_spread, verdict

LIMITS = {"max_other_cpu_share": 0.25, "max_other_load_per_core": 1.0, "max_round_spread": 0.3}


@contextmanager
def cpu_burners(count: int):
    """`count` real processes spinning on a core each, killed on exit."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.3)  # past their interpreter start-up
        yield [psutil.Process(b.pid) for b in burners]
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def burned_s(processes) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_the_load_measurement_counts_other_processes_cpu_and_not_its_own():
    cores = psutil.cpu_count()
    with cpu_burners(cores) as burners:
        before = burned_s(burners)
        with MachineLoad() as load:
            spin(1.0)
        burned = burned_s(burners) - before
    result = load.result
    ticks = 0.02 * (cores + 2)  # CPU time is counted in 10 ms ticks, per process and per core
    # Every second the burners spun is in the other processes' time (other workers may add more).
    assert result["other_cpu_cores"] * result["wall_s"] >= burned - ticks
    assert burned > 0  # they ran during the window (how much depends on who else shares the machine)
    # This process's spinning is its own, not another's: at most one core, and it did run.
    assert 0 < result["own_cpu_cores"] <= 1.0 + ticks / result["wall_s"]
    # With a burner per core the machine is saturated: others hold more than the default limit.
    assert result["other_cpu_share"] > DEFAULTS["benchmark"]["max_other_cpu_share"]
    assert result["cores"] == cores and len(result["load_average_before"]) == 3


def recorded(share=0.05, cores=2, load_after=(0.9, 0.8, 0.7), threads=1, spreads=None) -> dict:
    """A benchmark result as benchmark_candidates records it, with chosen numbers."""
    spreads = {"teacher": 0.05, "student": 0.08} if spreads is None else spreads
    load = {"cores": cores, "wall_s": 10.0, "load_average_before": [0.5, 0.5, 0.5],
            "load_average_after": list(load_after) if load_after else None, "own_cpu_cores": 1.0,
            "other_cpu_cores": share * cores, "other_cpu_share": share}
    return {"environment": {"threads": threads}, "machine_load": load,
            "candidates": {name: {"p50_round_spread": s} for name, s in spreads.items()}}


def test_a_quiet_run_is_not_noisy():
    assert verdict(recorded(), LIMITS) == {"noisy": False, "causes": [], "limits": LIMITS}


@pytest.mark.parametrize("share,noisy", [(0.24, False), (0.25, False), (0.26, True), (0.65, True)])
def test_other_processes_cpu_share_above_the_limit_is_noisy(share, noisy):
    result = verdict(recorded(share=share), LIMITS)
    assert result["noisy"] is noisy
    if noisy:
        assert result["causes"] == [f"other processes used {share * 2:.1f} of 2 cores during timing "
                                    "(limit: 25% of the cores, benchmark.max_other_cpu_share)"]


@pytest.mark.parametrize("load,threads,noisy", [(3.5, 1, True), (2.5, 1, False), (3.5, 2, False)])
def test_the_load_average_counts_only_other_work_per_core(load, threads, noisy):
    """(load − the benchmark's own threads) / cores against the limit 1.0: 3.5 on 2 cores with 1 thread
    is 1.25, with 2 threads 0.75."""
    result = verdict(recorded(load_after=(load, 1.0, 1.0), threads=threads), LIMITS)
    assert result["noisy"] is noisy
    assert any("benchmark.max_other_load_per_core" in cause for cause in result["causes"]) is noisy


def test_without_a_load_average_only_the_other_measures_decide():
    assert not verdict(recorded(load_after=None), LIMITS)["noisy"]


def test_a_spread_over_the_limit_is_noisy_and_names_the_candidate():
    result = verdict(recorded(spreads={"teacher": 0.45, "student": 0.1, "tiny": None}), LIMITS)
    assert result["noisy"] and result["causes"] == [
        "teacher's p50 moved by 45% between rounds (limit 30%, benchmark.max_round_spread)"]
    assert not verdict(recorded(spreads={"teacher": 0.3, "tiny": None}), LIMITS)["noisy"]


def test_by_default_the_spread_is_recorded_not_judged():
    assert DEFAULTS["benchmark"]["max_round_spread"] is None
    assert not verdict(recorded(spreads={"teacher": 0.9}), {**LIMITS, "max_round_spread": None})["noisy"]


def test_the_limits_are_the_benchmark_params():
    result = verdict(recorded(share=0.4), {**DEFAULTS["benchmark"], "max_other_cpu_share": 0.5})
    assert not result["noisy"] and result["limits"]["max_other_cpu_share"] == 0.5
    assert verdict(recorded(share=0.4), DEFAULTS["benchmark"])["noisy"]


def test_round_spread_compares_the_p50s_of_consecutive_rounds():
    steady = [10] * (3 * ROUNDS)
    assert round_spread(steady) == 0.0
    slow_end = [10] * (4 * 3) + [13] * 3  # the last fifth of the run 30 % slower
    assert round_spread(slow_end) == pytest.approx(0.3)
    # One slow sentence in a round leaves its p50 alone: the spread reads rounds, not outliers.
    assert round_spread([10, 10, 50] + [10] * (3 * ROUNDS - 3)) == 0.0


def test_round_spread_needs_three_samples_a_round():
    assert round_spread([10] * (3 * ROUNDS - 1)) is None
