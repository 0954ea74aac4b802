"""The artifact catalog and dvc.yaml name the same paths."""

from __future__ import annotations

from pathlib import Path

import yaml

from textcompress import catalog

ROOT = Path(__file__).resolve().parents[1]


def declared_paths() -> set[str]:
    """Every out, metric and plot path dvc.yaml declares, with `${key}` as the candidate `x`."""
    paths = set()
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        body = stage.get("do", stage)
        for section in ("outs", "metrics", "plots"):
            for entry in body.get(section, []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                paths.add(path.replace("${key}", "x"))
    return paths


def test_every_path_dvc_declares_is_named_in_the_catalog():
    named = {str(value) for value in vars(catalog).values() if isinstance(value, Path)}
    named |= {str(catalog.compressed("x")), str(catalog.onnx("x")), str(catalog.metrics("x"))}
    assert declared_paths() - named == set()


def test_a_catalog_under_a_root_gives_the_same_paths_there(tmp_path):
    paths = catalog.Catalog(tmp_path)
    assert paths.PREPARED == tmp_path / "artifacts" / "prepared"
    assert paths.failures == tmp_path / catalog.FAILURES
    assert paths.onnx("tiny") == tmp_path / "artifacts" / "onnx" / "tiny"
