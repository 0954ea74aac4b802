"""dvc.yaml cannot lie about what a stage reads: each stage's `deps` cover every project file its
command imports (at any depth, function-level imports included), and every artifact its code
reads. What is left out on purpose is named below with its reason."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("textcompress", "tasks", "flows")

# Modules that discover the modules of their own package at run time (not visible as imports).
DISCOVERS_ITS_PACKAGE = {"textcompress.techniques": "the technique registry imports every module of the package",
                         "textcompress.models": "the model registry (MODELS) imports every model module by name"}

# Left out of every stage's deps, and their imports not followed: no stage output depends on their
# code. They load and validate params (whose values DVC tracks through each stage's `params:`),
# format errors and write files atomically.
PLUMBING = {
    "textcompress/__init__.py": "empty package marker",
    "textcompress/stages/__init__.py": "the stage entry point: parses arguments, loads params, reports errors",
    "textcompress/config.py": "params validation; the values reach stages through `params:` in dvc.yaml",
    "textcompress/errors.py": "error classes and messages",
    "textcompress/fileio.py": "atomic writes and JSON helpers",
    "textcompress/catalog.py": "artifact paths; a moved path shows up as a changed cmd or dep",
    "textcompress/faults.py": "fault injection for tests/faults: does nothing unless $TEXTCOMPRESS_FAULT is set",
}
# Left out of one stage on purpose.
LEFT_OUT = {
    "teach": {
        # The model files grow with every compression family (new layer kinds, new attention);
        # retraining the teacher for that would cost half an hour of CPU per change. The teacher's
        # weights are the dep that matters downstream.
        "textcompress/models/encoder.py": "grows with every compression family; retraining costs 30 minutes",
        "textcompress/models/recurrent.py": "grows with the recurrent techniques; retraining costs 15 minutes",
        "textcompress/models/cnn.py": "the CNN student's model, never a teacher",
        # What data.py does to the text (tokenizing, splitting) reaches the teacher through
        # artifacts/prepared, which is a dep; teach only reads those arrays back.
        "textcompress/data.py": "its tokenization reaches teach through artifacts/prepared, a dep",
    },
}


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Project modules `path` imports anywhere in its body."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name):
                found.add(name)
                parts = name.split(".")  # importing a.b.c runs a/__init__ and a/b/__init__ first
                found.update(".".join(parts[:i]) for i in range(1, len(parts)) if module_file(".".join(parts[:i])))
    if module in DISCOVERS_ITS_PACKAGE:
        found.update(f"{module}.{p.stem}" for p in path.parent.glob("*.py") if p.name != "__init__.py")
    return found


def runs_no_code(path: Path) -> bool:
    """A package marker holding only its docstring: nothing in it can change an output."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def import_closure(module: str) -> set[Path]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        if str(module_file(current).relative_to(ROOT)) not in PLUMBING:
            todo.extend(imported_modules(module_file(current), current))
    return {module_file(m).relative_to(ROOT) for m in seen}


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_deps(stage: dict) -> list[str]:
    body = stage.get("do", stage)
    return [re.sub(r"\$\{key\}", "*", d) for d in body.get("deps", [])]


def covered(path: Path, deps: list[str]) -> bool:
    text = str(path)
    return any(text == d or text.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_project_file_a_stage_imports_is_a_dep(name):
    stage = stages()[name]
    command = stage.get("do", stage)["cmd"]
    module = re.search(r"python -m ([\w.]+)", command).group(1)
    deps = stage_deps(stage)
    missing = sorted(str(p) for p in import_closure(module) if not covered(p, deps) and not runs_no_code(ROOT / p)
                     and str(p) not in PLUMBING and str(p) not in LEFT_OUT.get(name, {}))
    assert not missing, f"dvc.yaml stage {name} imports these files but does not list them in deps: {missing}"


@pytest.mark.parametrize("name", sorted(LEFT_OUT))
def test_a_file_left_out_on_purpose_is_really_imported_and_really_left_out(name):
    """An exception that no longer applies (the file is listed, or no longer imported) is removed."""
    stage = stages()[name]
    module = re.search(r"python -m ([\w.]+)", stage.get("do", stage)["cmd"]).group(1)
    closure = {str(p) for p in import_closure(module)}
    for path in LEFT_OUT[name]:
        assert path in closure, f"{path} is no longer imported by stage {name}: drop the exception"
        assert not covered(Path(path), stage_deps(stage)), f"{path} is listed in {name}'s deps: drop the exception"


def test_the_closure_sees_function_level_imports_and_package_discovery():
    """The check itself can fail: compress reaches quantization.py only through a technique
    module, and the technique modules only through the registry's discovery."""
    closure = {str(p) for p in import_closure("textcompress.stages.compress")}
    assert "textcompress/deploy/quantization.py" in closure
    assert "textcompress/techniques/pruning.py" in closure
    assert not covered(Path("textcompress/deploy/quantization.py"), ["textcompress/techniques"])


def test_every_file_a_stage_reads_from_another_stage_is_declared():
    """The report reads failures.json, which the flow writes: it is a declared dep of report."""
    assert "reports/failures.json" in stage_deps(stages()["report"])
