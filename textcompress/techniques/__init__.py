"""The compression techniques: one module per family, each declaring its recipe steps
(`TECHNIQUES`, see base.py), discovered here. A candidate's recipe is an ordered list of
one-key mappings, e.g. `[{distill: {student: bert, layers: 2}}, {quantize: {mode: dynamic}}]`,
or a mapping `{seed: 7, steps: [...]}` that trains it with its own seed, parsed once into a
typed `Recipe` when params load.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Callable

from textcompress.techniques.base import (FAMILIES, LAYER_LOSSES, ExportContext, Recipe, Step, Technique, TechniqueContext,
                                          teacher_kind)

__all__ = ["FAMILIES", "ExportContext", "Recipe", "Step", "Technique", "TechniqueContext", "parse_recipe",
           "TECHNIQUES", "recipe_families", "registry", "validate_recipe"]


@cache
def registry() -> dict[str, Technique]:
    """Every declared technique by step name, from the modules of this package."""
    found: dict[str, Technique] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        for technique in getattr(importlib.import_module(f"{__name__}.{module}"), "TECHNIQUES", ()):
            if technique.name in found:
                raise TypeError(f"technique {technique.name!r} is declared twice (techniques/{module}.py)")
            found[technique.name] = technique
    return found


def __getattr__(name: str):
    if name == "TECHNIQUES":  # the registry, built on first use (importing the modules imports torch)
        return registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


KIND_NAMES = {"transformer": "a transformer", "transformers": "a model that runs in transformers (not converted)",
              "recurrent": "an LSTM/GRU", "cnn": "a CNN"}


def parse_recipe(name: str, raw, error: Callable[..., Exception], kind: str = "transformer") -> Recipe:
    """A candidate's recipe as written (its list of steps, or `{seed: N, steps: [...]}`) -> a Recipe;
    raises `error(problem, fix)` for the first thing wrong with it, the teacher being of `kind`
    (MODEL_KINDS; see base.teacher_kind). A malformed `{seed, steps}` mapping raises
    `error(problem, fix, key=...)`, `key` being the candidate's sub-key at fault (seed, steps, ...)."""
    from textcompress.config import candidate_form  # the one reader of the two forms (no torch, no cycle at import)

    techniques = registry()
    seed, raw = candidate_form(raw, error)
    if not isinstance(raw, list):
        raise error(f"must be a list of steps, got {type(raw).__name__}",
                    "write `[]`, `[{technique: {...}}, ...]` or `{seed: 7, steps: [{technique: {...}}, ...]}`")
    origin = f"the teacher is {KIND_NAMES[kind]}"
    teacher, own_tokenizer = kind, False  # own_tokenizer: a student read by another tokenizer than the teacher
    steps: list[Step] = []
    for position, item in enumerate(raw, start=1):
        if not isinstance(item, dict) or len(item) != 1:
            raise error(f"step {position} must be a mapping with one technique", "write e.g. `{quantize: {mode: dynamic}}`")
        (step_name, given), = item.items()
        if step_name not in techniques:
            raise error(f"step {position}: unknown technique {step_name!r}", f"use one of {sorted(techniques)}")
        if given is not None and not isinstance(given, dict):
            raise error(f"step {position} ({step_name}): arguments must be a mapping", f"write `{{{step_name}: {{...}}}}`")
        technique, given = techniques[step_name], dict(given or {})
        where = f"step {position} ({step_name})"
        check_arguments(technique, given, lambda problem, fix: error(f"{where}: {problem}", fix))
        if kind not in technique.models:
            usable = sorted(n for n, t in techniques.items() if kind in t.models)
            example = "`distill: {student: bert, layers: 3}` first, then this step on the student" \
                if kind == "transformers" else "e.g. `distill: {student: same}`"
            raise error(f"{where} works on {' and '.join(technique.models)} models, but {origin}",
                        f"on {KIND_NAMES[kind]} use {', '.join(usable)} ({example})")
        problem = technique.check(given, kind)
        if problem is None and kind not in ("transformer", "transformers"):
            used = [k for k in LAYER_LOSSES if given.get(k)]
            if used:
                problem = f"{used[0]} compares transformer layers, and this model is {kind}", f"set {used[0]}: 0"
        if problem is None and teacher == "transformers":
            used = [k for k in (*LAYER_LOSSES, "layer_map") if given.get(k)]
            if used:
                problem = (f"{used[0]} needs the teacher's layers, and the teacher runs in transformers (not converted)",
                           f"remove {used[0]}: students learn its logits")
            elif given.get("augment") and own_tokenizer:
                problem = ("augment has the teacher label new token sequences, and this student reads another "
                           "tokenizer (student_base's)", "remove augment")
        if problem:
            raise error(f"{where}: {problem[0]}", problem[1])
        if steps and steps[-1].technique.last:
            raise error(f"{where} follows {steps[-1].name}, which must come last",
                        f"{steps[-1].name}'s model is exported by itself: put {steps[-1].name} last and drop later steps")
        if technique.apply is not None and any(s.technique.apply is None for s in steps):
            raise error(f"{where} changes the PyTorch model after an ONNX-level step", "put ONNX-level steps such as quantize last")
        step = Step(technique, given, position)
        if technique.produces is not None:
            own_tokenizer = own_tokenizer or (teacher == "transformers" and step.args.get("student") == "bert")
            made = technique.produces(step.args, kind)
            if made != kind:
                kind, origin = made, f"step {position} made a {step.args.get('student')} student"
        steps.append(step)
    return Recipe(name, tuple(steps), seed)


def check_arguments(technique: Technique, given: dict, error: Callable[[str, str], Exception]) -> None:
    """Each argument against the technique's spec: known, an allowed value, the default's type, in bounds."""
    for key, value in given.items():
        if key not in technique.defaults:
            raise error(f"unknown argument {key!r}", f"use one of {sorted(technique.defaults)}")
        allowed = technique.all_choices.get(key)
        if allowed and value not in allowed:
            raise error(f"{key}={value!r} is not supported", f"use one of {list(allowed)}")
        if not _same_kind(value, technique.defaults[key]):
            raise error(f"{key}={value!r} should be like {technique.defaults[key]!r}",
                        f"give {key} a {type(technique.defaults[key]).__name__} value")
        low, high = technique.all_bounds.get(key, (None, None))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                (low is not None and value < low) or (high is not None and value > high)):
            raise error(f"{key}={value!r} is out of range", f"use a value from {low} to {high if high is not None else 'any'}")


def _same_kind(value, default) -> bool:
    """An argument must have its default's type; ints pass for floats; `layers` may be a list of indices."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) == isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int) or (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    return isinstance(value, type(default))


def validate_recipe(recipe, error: Callable[[str, str], Exception], kind: str = "transformer") -> None:
    """Raise `error(problem, fix)` for the first thing wrong with a recipe as written."""
    parse_recipe("", recipe, error, kind)


def candidate_recipe(params: dict, name: str) -> Recipe:
    """The typed recipe of candidate `name` in loaded (already validated) params."""
    from textcompress.errors import ParamsError, TextcompressError

    if name not in params["candidates"]:
        raise TextcompressError(f"params.yaml: no candidate named {name!r}. Fix: use one of {sorted(params['candidates'])}")
    return parse_recipe(name, params["candidates"][name],
                        lambda problem, fix, key=None: ParamsError("params.yaml", f"candidates.{name}" + (f".{key}" if key else ""),
                                                                   problem, fix),
                        teacher_kind(params["teach"]["architecture"], params["teach"]["finetuned_teacher"] or params["base_model"]))


def recipe_families(recipe: list | dict) -> list[str]:
    """The families a recipe as written uses, in order; a distillation that only recovers another
    step (`student: same`) does not count."""
    return parse_recipe("", recipe, lambda problem, fix, key=None: ValueError(
        f"{key + ': ' if key else ''}{problem}. Fix: {fix}")).families
