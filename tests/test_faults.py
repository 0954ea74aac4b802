"""textcompress.faults: $TEXTCOMPRESS_FAULT plans a fault at a named point; unset, nothing happens.
(tests/faults/ drives the real pipeline through these faults.)"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from textcompress import faults
from textcompress.fileio import atomic_dir, atomic_path


def test_unset_or_elsewhere_nothing_happens(monkeypatch, tmp_path):
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    faults.hit("write", tmp_path / "out")
    monkeypatch.setenv(faults.FAULT_ENV, "enospc@write=artifacts/onnx/a")
    faults.hit("write", "artifacts/onnx/b")
    faults.hit("train-step", "artifacts/onnx/a")


def test_a_planned_full_disk_fails_the_atomic_write_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(faults.FAULT_ENV, "kill@train-step=teach:3, enospc@write=onnx/a")
    assert faults.planned() == [("kill", "train-step", "teach:3"), ("enospc", "write", "onnx/a")]
    (tmp_path / "onnx" / "a").mkdir(parents=True)
    (tmp_path / "onnx" / "a" / "old.txt").write_text("the last good output")
    with pytest.raises(OSError) as raised:
        with atomic_dir(tmp_path / "onnx" / "a") as tmp:
            (tmp / "model.onnx").write_bytes(b"new")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "onnx" / "a")
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["a"]  # no temporary folder left
    assert (tmp_path / "onnx" / "a" / "old.txt").read_text() == "the last good output"
    with pytest.raises(OSError), atomic_path(tmp_path / "onnx" / "a") as tmp:
        tmp.write_text("x")
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == ["a"]


def test_a_planned_kill_is_a_real_sigkill():
    code = "from textcompress import faults; faults.hit('train-step', 'teach:12'); print('survived')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, faults.FAULT_ENV: "kill@train-step=teach:12"})
    assert done.returncode == -9 and "survived" not in done.stdout


@pytest.mark.parametrize("spec", ["boom@write=x", "kill", "kill@"])
def test_a_malformed_plan_is_refused(spec):
    with pytest.raises(ValueError, match="ACTION@POINT=WHERE"):
        faults.planned(spec)
