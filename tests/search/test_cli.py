"""`textcompress search` refuses bad input before anything runs: one line naming the file, the key
and the fix, exit status 2, no run directory made, no traceback."""

from __future__ import annotations

import pytest
import yaml

from textcompress.cli import main

SPACE = [{"quantize": {"mode": {"choices": ["dynamic", "static"]}}}]


def project_with(tmp_path, search: dict, selection: float = 0.05):
    (tmp_path / "params").mkdir()
    (tmp_path / "params.yaml").write_text("{}\n")
    profile = {"data": {"selection_fraction": selection}, "search": search}
    (tmp_path / "params" / "search.yaml").write_text(yaml.safe_dump(profile))
    return tmp_path


def refused(capsys, project, *args) -> str:
    with pytest.raises(SystemExit) as exited:
        main(["--project", str(project), "search", "--params", "params/search.yaml", *args])
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert said.startswith("error: ") and "Traceback" not in said and "Fix:" in said
    assert not (project / "runs").exists()  # nothing was made
    return said


@pytest.mark.parametrize("search, selection, key, problem", [
    ({"space": []}, 0.05, "search.space", "is empty: there is nothing to search"),
    ({"space": [{"quantise": {}}]}, 0.05, "search.space", "unknown technique 'quantise'"),
    ({"space": [{"quantize": {"modes": "static"}}]}, 0.05, "search.space", "unknown argument 'modes'"),
    ({"space": [{"quantize": {"mode": "dynamic"}}, {"distill": {"layers": 2}}]}, 0.05, "search.space", "no trial could run"),
    ({"space": SPACE}, 0.0, "data.selection_fraction", "never on validation"),
    ({"space": SPACE, "objective": "accuracy"}, 0.05, "search.objective", "must be one of"),
])
def test_bad_input_is_refused_before_anything_runs(tmp_path, capsys, search, selection, key, problem):
    said = refused(capsys, project_with(tmp_path, search, selection))
    assert f"params/search.yaml: `{key}`" in said and problem in said


def test_bad_budgets_on_the_command_line_are_refused(tmp_path, capsys):
    project = project_with(tmp_path, {"space": SPACE})
    assert "--trials -1: must be 0 or above" in refused(capsys, project, "--trials", "-1")
    assert "--minutes -5: must be above 0" in refused(capsys, project, "--minutes", "-5")


def test_the_project_s_own_params_are_not_searched_in_place(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"selection_fraction": 0.05}, "search": {"space": SPACE}}))
    with pytest.raises(SystemExit):
        main(["--project", str(tmp_path), "search", "--params", "params.yaml"])
    said = capsys.readouterr().err
    assert "runs in a profile's own directory" in said and "Fix: textcompress search --params params/search.yaml" in said
