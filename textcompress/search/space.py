"""The recipe space `textcompress search` explores, as params.yaml declares it (`search.space`).

An ordered list of steps, written like a candidate's recipe with two additions: `optional: true`
lets a trial leave the step out, and an argument may be a range or a set of choices:

    - trim_vocab: {min_count: 1}
      optional: true
    - distill: {student: bert, layers: {low: 2, high: 4}, augment: {choices: [0, 1, 2]}, epochs: 1}
    - quantize: {mode: {choices: [static, dynamic]}}

A range is `{low, high}` with an optional `step` and `log`; ints when low and high are ints.
Every value a range or a choice can give is checked against the technique's own spec, and the
recipes at both ends of the space (every optional step, none; the lows, the highs) are parsed as a
candidate would be, so a space no trial could run fails when params load. Sampling names each
parameter by its step's position and technique, so a stored study resumes with the same names.
No Optuna import here: `sample_recipe` takes any object with Optuna's `suggest_*` methods.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from textcompress.techniques import check_arguments, parse_recipe, registry


OPTIONAL = "optional"
RANGE_KEYS = {"low", "high", "step", "log"}
SCALARS = (bool, int, float, str)
EXAMPLE = "e.g. `- distill: {layers: {low: 2, high: 4}}` or `- quantize: {mode: {choices: [static, dynamic]}}`"

# (problem, fix) -> the exception to raise; the caller adds the file and the key.
Error = Callable[[str, str], Exception]


def _step_parts(position: int, item, error: Error) -> tuple[str, dict, bool]:
    """One entry of the space -> (technique name, its argument specs, whether it is optional)."""
    if not isinstance(item, dict):
        raise error(f"step {position} must be a mapping with one technique", "write e.g. `- quantize: {mode: dynamic}`")
    optional = item.get(OPTIONAL, False)
    if not isinstance(optional, bool):
        raise error(f"step {position}: optional must be true or false, got {optional!r}", "write optional: true or false")
    names = [k for k in item if k != OPTIONAL]
    if len(names) != 1:
        raise error(f"step {position} names {len(names)} techniques ({', '.join(map(str, names)) or 'none'})",
                    "write one technique per step, e.g. `- distill: {layers: 3}` with `optional: true` beside it")
    name = names[0]
    if name not in registry():
        raise error(f"step {position}: unknown technique {name!r}", f"use one of {sorted(registry())}")
    specs = item[name]
    if specs is not None and not isinstance(specs, dict):
        raise error(f"step {position} ({name}): arguments must be a mapping", f"write `{name}: {{...}}`")
    return name, dict(specs or {}), optional


def _is_range(spec) -> bool:
    return isinstance(spec, dict) and "choices" not in spec


def _values(spec) -> list:
    """The values of one argument's spec that stand for all of it: a fixed value, every choice, a range's ends."""
    if isinstance(spec, dict) and "choices" in spec:
        return list(spec["choices"])
    if _is_range(spec):
        return [spec["low"], spec["high"]]
    return [spec]


def _check_spec(where: str, technique, arg: str, spec, error: Error) -> None:
    """One argument's spec is well formed and every value it can give is one the technique takes."""
    def fail(problem: str, fix: str) -> Exception:
        return error(f"{where}: {problem}", fix)

    if arg not in technique.defaults:
        raise fail(f"unknown argument {arg!r}", f"use one of {sorted(technique.defaults)}")
    if isinstance(spec, dict) and "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise fail(f"{arg}: choices stand alone, got also {sorted(set(spec) - {'choices'})}", "write {choices: [...]}")
        if not isinstance(choices, list) or not choices:
            raise fail(f"{arg}: choices must be a non-empty list", f"e.g. {arg}: {{choices: [a, b]}}")
        if not all(isinstance(c, SCALARS) for c in choices):
            raise fail(f"{arg}: each choice must be a number, text or true/false", "give the choices as plain values")
        if len(set(map(json.dumps, choices))) < len(choices):
            raise fail(f"{arg}: a choice is listed twice ({choices})", "list each choice once")
    elif isinstance(spec, dict):
        if not {"low", "high"} <= set(spec) or set(spec) - RANGE_KEYS:
            raise fail(f"{arg}: a range is {{low, high}} with optional step and log, got keys {sorted(spec)}",
                       f"e.g. {arg}: {{low: 2, high: 4}}, or {arg}: {{choices: [...]}}")
        low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
        numbers = [v for v in (low, high, step) if v is not None]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise fail(f"{arg}: low, high and step must be numbers, got {spec}", f"e.g. {arg}: {{low: 2, high: 4}}")
        if low > high:
            raise fail(f"{arg}: low {low} is above high {high}", "swap them")
        whole = isinstance(low, int) and isinstance(high, int)
        if isinstance(technique.defaults[arg], int) and not isinstance(technique.defaults[arg], bool) and not whole:
            raise fail(f"{arg} takes whole numbers, got the range {low}..{high}", "give low and high as whole numbers")
        if not isinstance(log, bool):
            raise fail(f"{arg}: log must be true or false", "write log: true or log: false")
        if step is not None and (step <= 0 or (whole and not isinstance(step, int))):
            raise fail(f"{arg}: step must be a positive {'whole number' if whole else 'number'}, got {step}", "e.g. step: 1")
        if log and (low <= 0 or step not in ((None, 1) if whole else (None,))):
            raise fail(f"{arg}: a log range needs low > 0 and no step", f"e.g. {arg}: {{low: 1.0e-5, high: 1.0e-3, log: true}}")
    for value in _values(spec):  # the technique's own rules: type, choices, bounds
        check_arguments(technique, {arg: value}, fail)


def check_space(space, error: Error, kind: str = "transformer") -> list[tuple[str, dict, bool]]:
    """Raise `error(problem, fix)` for the first thing wrong with the space, the teacher being of
    `kind` (see techniques.parse_recipe); return its steps as (technique, argument specs, optional)."""
    if not isinstance(space, list) or not space:
        raise error("is empty: there is nothing to search", f"list the steps recipes may use, {EXAMPLE}")
    steps = [_step_parts(position, item, error) for position, item in enumerate(space, start=1)]
    for position, (name, specs, _) in enumerate(steps, start=1):
        for arg, spec in specs.items():
            _check_spec(f"step {position} ({name})", registry()[name], arg, spec, error)
    for label, included in (("with every optional step", lambda o: True), ("with no optional step", lambda o: not o)):
        for end in (0, -1):
            recipe = [{name: {arg: _values(spec)[end] for arg, spec in specs.items()}}
                      for name, specs, optional in steps if included(optional)]
            parse_recipe("", recipe, lambda problem, fix, label=label, end=end: error(
                f"no trial could run: the recipe {label} at the {'low' if end == 0 else 'high'} ends fails: {problem}",
                f"{fix}; or reorder the steps or mark them optional"), kind)
    return steps


def sample_recipe(space: list, trial) -> list[dict]:
    """One recipe from the (checked) space, chosen by `trial` (an Optuna trial or anything with its
    suggest_* methods). Parameter names: `<position>.<technique>` for whether an optional step is
    in, `<position>.<technique>.<argument>` for an argument."""
    recipe = []
    for position, item in enumerate(space, start=1):
        name = next(k for k in item if k != OPTIONAL)
        prefix = f"{position}.{name}"
        if item.get(OPTIONAL, False) and not trial.suggest_categorical(prefix, [True, False]):
            continue
        args = {}
        for arg, spec in (item[name] or {}).items():
            label = f"{prefix}.{arg}"
            if isinstance(spec, dict) and "choices" in spec:
                args[arg] = trial.suggest_categorical(label, list(spec["choices"]))
            elif _is_range(spec):
                low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
                if isinstance(low, int) and isinstance(high, int):
                    args[arg] = trial.suggest_int(label, low, high, step=step or 1, log=log)
                else:
                    value = trial.suggest_float(label, float(low), float(high), step=step, log=log)
                    # Optuna's grid point low + k*step carries float error (0.6000000000000001):
                    # written rounded, the pasted recipe reads as the space does. Only a grid
                    # point: rounding a log range's small value (an lr of 1e-13) would zero it.
                    args[arg] = round(value, 12) if step is not None else value
            else:
                args[arg] = spec
        recipe.append({name: args})
    return recipe


def _misfit(specs: dict, args: dict, technique) -> tuple[str | None, dict]:
    """Why a recipe's step's arguments fall outside one step of the space (None: they fit), and the
    values its sampled arguments take. An argument the space leaves out must be the technique's default."""
    unknown = sorted(set(args) - set(technique.defaults))
    if unknown:
        return f"unknown argument {unknown[0]!r} (known: {', '.join(sorted(technique.defaults))})", {}
    values = {}
    for arg in sorted(set(specs) | set(args)):
        value, spec = args.get(arg, technique.defaults[arg]), specs.get(arg, technique.defaults[arg])
        if isinstance(spec, dict) and "choices" in spec:
            if value not in spec["choices"]:
                return f"{arg} {value!r} is not one of {spec['choices']}", {}
        elif _is_range(spec):
            low, high, step = spec["low"], spec["high"], spec.get("step")
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric or not low <= value <= high:
                return f"{arg} {value!r} is outside {low}..{high}", {}
            if step is not None and abs((value - low) / step - round((value - low) / step)) > 1e-9:
                return f"{arg} {value!r} is off the range's steps of {step} from {low}", {}
        elif value != spec:
            return f"{arg} is {value!r}, the space's is {spec!r}", {}
        else:
            continue
        values[arg] = value
    return None, values


def recipe_params(space: list, recipe: list, error: Error) -> dict:
    """The parameters under which sample_recipe draws `recipe` from the (checked) space, for a study
    to try it first (search.start_from): a hand-written recipe the search starts from. Each of the
    recipe's steps is matched in order to the next step of the space that fits it; an optional step
    that does not fit is left out. `error(problem, fix)` says why a recipe is not in the space."""
    if not isinstance(recipe, list) or not recipe:
        raise error(f"must be a list of steps, got {recipe!r}", "paste a candidate's recipe, e.g. [{quantize: {mode: dynamic}}]")
    params, at, passed_over = {}, 0, ""
    for position, item in enumerate(space, start=1):
        name = next(k for k in item if k != OPTIONAL)
        prefix, step = f"{position}.{name}", recipe[at] if at < len(recipe) else None
        given = next(iter(step), None) if isinstance(step, dict) and len(step) == 1 else None
        reason = f"the recipe has no step {at + 1}" if step is None else \
            f"its step {at + 1} ({given or repr(step)}) is not {name}" if given != name else None
        if reason is None and not isinstance(step[name] or {}, dict):
            reason = f"its step {at + 1}'s arguments are not a mapping ({step[name]!r})"
        if reason is None:
            reason, values = _misfit(item[name] or {}, step[name] or {}, registry()[name])
        if item.get(OPTIONAL, False):
            params[prefix] = reason is None
            if given == name and reason is not None:  # left out: say why, should nothing later take the step
                passed_over = f" (the optional step {position}, {name}, did not take it: {reason})"
        elif reason is not None:
            raise error(f"is not in the space: at the space's step {position} ({name}), {reason}{passed_over}",
                        "widen the space to hold it, or mark that step optional")
        if reason is None:
            params.update({f"{prefix}.{arg}": value for arg, value in values.items()})
            at, passed_over = at + 1, ""
    if at < len(recipe):
        raise error(f"is not in the space: its steps from {at + 1} ({', '.join(map(str, recipe[at:]))}) fit no step "
                    f"left{passed_over}", "add those steps to the space, or remove them from the recipe")
    return params


def recipe_key(recipe) -> str:
    """A short stable hash of a recipe as written (steps, or `{seed, steps}`): the same
    configuration gets the same key, so its candidate is the same DVC stage."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def candidate_name(recipe, seed: int | None = None) -> str:
    """The trial's candidate: `search-<key>`, and `search-<key>-s<seed>` for a seed's repeat."""
    return f"search-{recipe_key(recipe)}" + (f"-s{seed}" if seed is not None else "")
