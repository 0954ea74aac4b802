"""The CLI's params handling: a sweep file becomes a complete params.yaml, a bad one changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from textcompress.cli import activate_params
from textcompress.config import load_params
from textcompress.errors import ParamsError

REPO = Path(__file__).resolve().parents[1]


def tracked_sections() -> set[str]:
    """Every params section some stage in dvc.yaml declares (top-level names)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    sections = set()
    for stage in stages.values():
        body = stage.get("do", stage)
        for entry in body.get("params", []):
            sections.add(str(entry).split(".")[0])
    return sections


@pytest.mark.parametrize("sweep", sorted(p.name for p in (REPO / "params").glob("*.yaml")))
def test_every_sweep_file_becomes_a_complete_params_yaml(tmp_path, sweep):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    active = activate_params(REPO / "params" / sweep, tmp_path)
    written = yaml.safe_load(active.read_text())
    assert tracked_sections() <= set(written)
    assert load_params(active) == load_params(REPO / "params" / sweep)


def test_a_bad_sweep_file_leaves_params_yaml_untouched(tmp_path):
    original = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(original)
    (tmp_path / "bad.yaml").write_text("teach:\n  epochs: -1\n")
    with pytest.raises(ParamsError, match="teach.epochs"):
        activate_params(tmp_path / "bad.yaml", tmp_path)
    assert (tmp_path / "params.yaml").read_text() == original
