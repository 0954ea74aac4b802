"""Tests for tasks.stages: running one DVC stage, here with a real DVC project of one stage."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest

from tasks.stages import (
    StageFailed, TransientStageFailure, explain_failure, project_env, run_dvc_stage, stage_failure,
)
from textcompress.errors import StageError


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


PROGRESS_TAIL = "teach epoch 2:   5%|▍ | 8/171 [00:23<07:55, 2.91s/it]"


def test_a_stage_s_own_record_is_the_reason():
    record = StageError("prepare", "DataError", "a.tsv:3: is empty. Fix: add rows", file="a.tsv", line=3, fix="add rows")
    failure = stage_failure("prepare", explain_failure("prepare", 255, record, PROGRESS_TAIL), PROGRESS_TAIL)
    assert type(failure) is StageFailed and failure.record is record
    assert str(failure) == "stage prepare failed: a.tsv:3: is empty. Fix: add rows"
    assert (failure.path, failure.line, failure.fix) == ("a.tsv", 3, "add rows")


@pytest.mark.parametrize("returncode, dvc_says", [
    (255, "ERROR: failed to reproduce 'teach': failed to run: python -m textcompress.stages.teach, exited with -9"),
    (255, "ERROR: failed to reproduce 'teach': failed to run: python -m textcompress.stages.teach, exited with 137"),
    (-9, ""),  # DVC itself was killed
])
def test_a_killed_process_is_named_by_its_signal_never_by_its_last_output(returncode, dvc_says):
    output = f"Running stage 'teach':\n{PROGRESS_TAIL}\r{PROGRESS_TAIL}\n{dvc_says}\n"
    record = explain_failure("teach", returncode, None, output)
    assert record.kind == "killed" and record.message == "killed by signal 9 (SIGKILL: out of memory?)"
    assert "free memory" in record.fix and "epoch" not in record.message
    resumable = explain_failure("teach", returncode, None, output, resumable=True)
    assert resumable.message.endswith("; rerun resumes from the last checkpoint in artifacts/checkpoints/")


def test_dvc_s_error_line_is_found_after_the_unfinished_progress_bar_of_a_killed_stage():
    # As DVC prints it (seen in tests/faults): the killed stage's bar has no newline, DVC's line continues it.
    output = f"Running stage 'teach':\n\r{PROGRESS_TAIL}ERROR: failed to reproduce 'teach': failed to run: " \
             "python -m textcompress.stages.teach, exited with -9\n"
    record = explain_failure("teach", 255, None, output, resumable=True)
    assert record.kind == "killed" and record.message.startswith("killed by signal 9 (SIGKILL")
    assert record.message.endswith("rerun resumes from the last checkpoint in artifacts/checkpoints/")


def test_without_a_record_or_a_signal_dvc_s_own_error_line_is_the_reason():
    output = f"{PROGRESS_TAIL}\nERROR: failed to reproduce 'x': output 'y' does not exist\n"
    assert explain_failure("x", 255, None, output).message == "failed to reproduce 'x': output 'y' does not exist"
    assert explain_failure("x", 255, None, PROGRESS_TAIL).message == "dvc repro exited with 255 (see DVC's output above)"


def test_only_a_lock_held_elsewhere_is_transient():
    said = "ERROR: Unable to acquire lock. Most likely another DVC process is running"
    assert type(stage_failure("x", explain_failure("x", 255, None, said), said)) is TransientStageFailure
    user = StageError("x", "DataError", "a.tsv: is locked by nobody")  # a user error is never retried
    assert type(stage_failure("x", user, said)) is StageFailed
    locked = StageError("x", "internal", "OperationalError: database is locked", fix="report it")
    assert type(stage_failure("x", locked, "")) is TransientStageFailure


def test_a_failure_says_its_fix_and_keeps_its_record_across_processes():
    record = StageError("teach", "internal", "RuntimeError: boom", fix="report it with the traceback above", exit_code=1,
                        traceback="Traceback ...")
    failure = stage_failure("teach", record, "")
    assert str(failure) == "stage teach failed: RuntimeError: boom. Fix: report it with the traceback above"
    copy = pickle.loads(pickle.dumps(failure))  # as a task runner returns it from another process
    assert type(copy) is StageFailed and copy.record == record and str(copy) == str(failure)


def _dvc_project(tmp_path, stages: str):
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=project_env())
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent(stages))


def test_a_stage_killed_by_sigkill_is_reported_as_killed_with_its_checkpoint(tmp_path):
    (tmp_path / "probe.py").write_text(f"import os, signal, sys\nsys.stdout.write({PROGRESS_TAIL!r} + '\\r')\n"
                                       "sys.stdout.flush()\nos.kill(os.getpid(), signal.SIGKILL)\n")
    _dvc_project(tmp_path, """\
        stages:
          teach:
            cmd: python probe.py
            outs:
              - teacher.txt
        """)
    (tmp_path / "artifacts" / "checkpoints").mkdir(parents=True)
    (tmp_path / "artifacts" / "checkpoints" / "teach.pt").write_bytes(b"state")
    with pytest.raises(StageFailed) as failed:
        run_dvc_stage.fn("teach", str(tmp_path))
    assert str(failed.value) == ("stage teach failed: killed by signal 9 (SIGKILL: out of memory?); rerun resumes from "
                                 f"the last checkpoint in artifacts/checkpoints/. Fix: {failed.value.record.fix}")
    # DVC reports the status its shell saw: -9 when it ran the command itself, 128+9 through sh.
    assert failed.value.record.kind == "killed" and failed.value.record.exit_code in (-9, 128 + 9)


def test_the_flow_reads_the_record_the_stage_script_wrote(tmp_path):
    _dvc_project(tmp_path, """\
        stages:
          prepare:
            cmd: python -m textcompress.stages.prepare --params nowhere.yaml --out prepared
            outs:
              - prepared
        """)
    with pytest.raises(StageFailed) as failed:
        run_dvc_stage.fn("prepare", str(tmp_path))
    record = failed.value.record
    assert (record.stage, record.kind, record.file, record.key) == ("prepare", "ParamsError", "nowhere.yaml", "(file)")
    assert str(failed.value) == f"stage prepare failed: {record.message}" and record.message.startswith("nowhere.yaml: ")
    assert failed.value.fix == "run from the project root or pass --params PATH"
    assert not list(tmp_path.glob("*.json"))  # the record lives outside the project: no DVC output, no stray file


def _flaky_project(tmp_path, message: str, failures: int):
    """A stage that fails `failures` times saying `message`, then writes its output."""
    (tmp_path / "flaky.py").write_text(textwrap.dedent(f"""\
        import pathlib, sys
        tries = pathlib.Path("tries.txt")
        n = int(tries.read_text()) + 1 if tries.exists() else 1
        tries.write_text(str(n))
        if n <= {failures}:
            sys.exit("ERROR: {message}")
        pathlib.Path("out.txt").write_text("done")
        """))
    _dvc_project(tmp_path, """\
        stages:
          flaky:
            cmd: python flaky.py
            outs:
              - out.txt
        """)


def _run_in_a_flow(tmp_path):
    from prefect import flow

    @flow
    def one_stage():
        return run_dvc_stage("flaky", str(tmp_path))

    return one_stage()


def test_a_transient_failure_is_retried_and_the_run_goes_on(tmp_path, prefect_harness):
    _flaky_project(tmp_path, "Unable to acquire lock on the cache", failures=1)
    assert _run_in_a_flow(tmp_path) == "ran"
    assert (tmp_path / "tries.txt").read_text() == "2" and (tmp_path / "out.txt").read_text() == "done"


def test_a_final_failure_is_not_retried_and_says_the_stages_error(tmp_path, prefect_harness):
    _flaky_project(tmp_path, "the recipe is wrong", failures=1)
    with pytest.raises(StageFailed) as failed:
        _run_in_a_flow(tmp_path)
    assert not isinstance(failed.value, TransientStageFailure)
    assert (tmp_path / "tries.txt").read_text() == "1" and not (tmp_path / "out.txt").exists()
    assert "stage flaky failed:" in str(failed.value) and "exited with 1" in str(failed.value)


def test_the_schedule_gate_skips_only_when_dvc_reports_nothing_changed(tmp_path):
    """pipeline_is_up_to_date is what a scheduled run asks before doing anything."""
    from tasks.stages import pipeline_is_up_to_date

    (tmp_path / "data.txt").write_text("v1")
    (tmp_path / "params.yaml").write_text("recipe: a\n")
    _dvc_project(tmp_path, """\
        stages:
          train:
            cmd: python -c "import shutil; shutil.copy('data.txt', 'model.txt')"
            deps:
              - data.txt
            params:
              - recipe
            outs:
              - model.txt
        """)
    assert not pipeline_is_up_to_date(tmp_path)  # never ran
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=tmp_path, check=True, env=project_env())
    assert pipeline_is_up_to_date(tmp_path)
    (tmp_path / "data.txt").write_text("v2")  # new data
    assert not pipeline_is_up_to_date(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=tmp_path, check=True, env=project_env())
    (tmp_path / "params.yaml").write_text("recipe: b\n")  # a changed recipe
    assert not pipeline_is_up_to_date(tmp_path)
    (tmp_path / "params.yaml").write_text("recipe: a\n")
    (tmp_path / "data.txt").write_text("v1")
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=tmp_path, check=True, env=project_env())
    assert pipeline_is_up_to_date(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: [not, a, mapping\n")  # `dvc status` itself fails: run, do not skip
    assert not pipeline_is_up_to_date(tmp_path)


def _report_project(tmp_path):
    """A stage that writes two reports from version.txt, or half of one and fails when `fail` exists."""
    (tmp_path / "report.py").write_text(textwrap.dedent("""\
        import pathlib, sys
        version = pathlib.Path("version.txt").read_text()
        pathlib.Path("reports").mkdir(exist_ok=True)
        if pathlib.Path("fail").exists():
            pathlib.Path("reports/candidates.json").write_text('{"half": ')
            sys.exit("ERROR: the report failed")
        pathlib.Path("reports/candidates.json").write_text('{"version": "' + version + '"}')
        pathlib.Path("reports/pareto.png").write_text("plot of " + version)
        """))
    (tmp_path / "version.txt").write_text("1")
    _dvc_project(tmp_path, """\
        stages:
          report:
            cmd: python report.py
            deps: [report.py, version.txt]
            outs:
              - reports/candidates.json:
                  cache: false
            plots:
              - reports/pareto.png:
                  cache: false
        """)
    return ["reports/candidates.json", "reports/pareto.png"]


def test_a_failed_stage_leaves_the_last_good_run_s_reports_as_they_were(tmp_path):
    outs = _report_project(tmp_path)
    assert run_dvc_stage.fn("report", str(tmp_path), outs=outs) == "ran"
    good = {out: (tmp_path / out).read_text() for out in outs}
    (tmp_path / "version.txt").write_text("2")
    (tmp_path / "fail").touch()
    with pytest.raises(StageFailed, match="stage report failed"):
        run_dvc_stage.fn("report", str(tmp_path), outs=outs)  # DVC deleted both before the command ran
    assert {out: (tmp_path / out).read_text() for out in outs} == good
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["candidates.json", "pareto.png"]
    (tmp_path / "fail").unlink()
    assert run_dvc_stage.fn("report", str(tmp_path), outs=outs) == "ran"  # a good run replaces them
    assert (tmp_path / "reports" / "candidates.json").read_text() == '{"version": "2"}'


def test_a_first_run_that_fails_leaves_no_half_written_report(tmp_path):
    outs = _report_project(tmp_path)
    (tmp_path / "fail").touch()
    with pytest.raises(StageFailed):
        run_dvc_stage.fn("report", str(tmp_path), outs=outs)
    assert not (tmp_path / "reports" / "candidates.json").exists()
