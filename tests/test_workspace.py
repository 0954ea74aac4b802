"""What a workspace copies from its project (textcompress/workspace.py)."""

import subprocess

from textcompress.workspace import project_files


def test_a_workspace_copies_the_project_but_no_other_workspace_and_no_bytecode(tmp_path):
    # No .gitignore: a sweep's workspaces being made beside this one must still not be copied into it.
    for name in ("dvc.yaml", "textcompress/stage.py", ".sweep/student-a/dvc.yaml", "runs/quick/params.yaml",
                 "textcompress/__pycache__/stage.cpython-311.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert sorted(project_files(tmp_path)) == ["dvc.yaml", "textcompress/stage.py"]
