"""Tests for tasks.stages: running one DVC stage, here with a real DVC project of one stage."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tasks.stages import project_env, run_dvc_stage


def test_threads_reach_the_stage_through_its_environment_and_not_its_params(tmp_path):
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=project_env())
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent("""\
        stages:
          probe:
            cmd: python -c "import os; open('threads.txt', 'w').write(os.environ['OMP_NUM_THREADS'] + ' ' + os.environ['MKL_NUM_THREADS'])"
            outs:
              - threads.txt
        """))
    assert run_dvc_stage.fn("probe", str(tmp_path), threads=3) == "ran"
    assert (tmp_path / "threads.txt").read_text() == "3 3"
    # Threads are not a param: the same stage with another thread count is still up to date.
    assert run_dvc_stage.fn("probe", str(tmp_path), threads=1) == "cached"
