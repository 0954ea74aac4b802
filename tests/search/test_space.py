"""The search space: every mistake is a ParamsError naming the file, `search.space` and a fix, when
params load; sampling gives valid recipes under stable parameter names; keys are stable."""

import re

import pytest
import yaml

from textcompress.config import load_params
from textcompress.errors import ParamsError
from textcompress.search.space import candidate_name, check_space, recipe_key, recipe_params, sample_recipe
from textcompress.techniques import parse_recipe

SPACE = [
    {"trim_vocab": {"min_count": 1}, "optional": True},
    {"distill": {"student": "bert", "layers": {"low": 2, "high": 4}, "augment": {"choices": [0, 1, 2]},
                 "lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True}, "epochs": 1}},
    {"prune_structured": {"heads": {"low": 0.0, "high": 0.5, "step": 0.25}}, "optional": True},
    {"quantize": {"mode": {"choices": ["static", "dynamic"]}}},
]


def load(tmp_path, space):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"search": {"space": space}}))
    return load_params(path)


def error_of(tmp_path, space) -> ParamsError:
    with pytest.raises(ParamsError) as caught:
        load(tmp_path, space)
    err = caught.value
    assert err.key == "search.space" and str(tmp_path / "params.yaml") in str(err) and "Fix:" in str(err)
    return err


def test_a_good_space_loads_as_written(tmp_path):
    assert load(tmp_path, SPACE)["search"]["space"] == SPACE


def test_the_default_space_is_empty_and_loads(tmp_path):
    assert load(tmp_path, [])["search"]["space"] == []


def test_an_empty_space_is_an_error_for_the_search():
    with pytest.raises(ValueError, match="is empty: there is nothing to search"):
        check_space([], lambda problem, fix: ValueError(f"{problem}. Fix: {fix}"))


@pytest.mark.parametrize("space, said", [
    ([{"distil": {"layers": 2}}], "step 1: unknown technique 'distil'"),
    ([{"distill": {"layer": 2}}], "step 1 (distill): unknown argument 'layer'"),
    ([{"distill": {"layers": {"low": 0, "high": 3}}}], "layers=0 is out of range"),
    ([{"prune_structured": {"heads": {"low": 0.2, "high": 1.5}}}], "heads=1.5 is out of range"),
    ([{"distill": {"layers": {"low": 4, "high": 2}}}], "low 4 is above high 2"),
    ([{"distill": {"layers": {"low": 2.0, "high": 4}}}], "layers takes whole numbers"),
    ([{"quantize": {"mode": {"choices": ["static", "int4"]}}}], "mode='int4' is not supported"),
    ([{"quantize": {"mode": {"choices": []}}}], "choices must be a non-empty list"),
    ([{"quantize": {"mode": {"choices": ["static", "static"]}}}], "a choice is listed twice"),
    ([{"distill": {"layers": {"low": 2}}}], "a range is {low, high}"),
    ([{"distill": {"lr": {"low": 0.0, "high": 1.0e-3, "log": True}}}], "a log range needs low > 0"),
    ([{"distill": {"layers": 2}, "optional": "yes"}], "optional must be true or false"),
    ([{"distill": {"layers": 2}, "quantize": {}}], "step 1 names 2 techniques"),
    (["distill"], "step 1 must be a mapping"),
    # contradictory: int8 is an ONNX-level step, and nothing may change the PyTorch model after it
    ([{"quantize": {"mode": "dynamic"}}, {"distill": {"layers": 2}}], "no trial could run: the recipe with every optional step"),
    # only the recipe without the optional step fails: cutting LSTM units needs the LSTM student first
    ([{"distill": {"student": "lstm"}, "optional": True}, {"prune_structured": {"units": 0.5}}],
     "no trial could run: the recipe with no optional step"),
])
def test_each_mistake_names_the_key_and_a_fix(tmp_path, space, said):
    assert said in str(error_of(tmp_path, space))


def test_a_space_valid_only_without_an_optional_step_is_refused(tmp_path):
    # quantize then quantize is fine; an optional distill after the ONNX-level step is not
    space = [{"quantize": {"mode": "dynamic"}}, {"distill": {"layers": 2}, "optional": True}]
    assert "with every optional step" in str(error_of(tmp_path, space))


class Recorder:
    """Optuna's suggest_* calls, answered from `answers` (else the low end / first choice), recorded."""

    def __init__(self, answers=None):
        self.answers, self.asked = answers or {}, {}

    def _answer(self, name, default):
        self.asked[name] = self.answers.get(name, default)
        return self.asked[name]

    def suggest_categorical(self, name, choices):
        return self._answer(name, choices[0])

    def suggest_int(self, name, low, high, step=1, log=False):
        return self._answer(name, low)

    def suggest_float(self, name, low, high, step=None, log=False):
        return self._answer(name, low)


def test_sampling_names_parameters_by_position_and_leaves_out_declined_steps():
    trial = Recorder({"1.trim_vocab": False, "3.prune_structured": True, "2.distill.layers": 3,
                      "4.quantize.mode": "dynamic"})
    recipe = sample_recipe(SPACE, trial)
    assert recipe == [{"distill": {"student": "bert", "layers": 3, "augment": 0, "lr": 1.0e-5, "epochs": 1}},
                      {"prune_structured": {"heads": 0.0}}, {"quantize": {"mode": "dynamic"}}]
    assert set(trial.asked) == {"1.trim_vocab", "2.distill.layers", "2.distill.augment", "2.distill.lr",
                                "3.prune_structured", "3.prune_structured.heads", "4.quantize.mode"}


def test_a_stepped_float_is_written_as_its_grid_value():
    space = [{"prune_structured": {"ffn": {"low": 0.3, "high": 0.7, "step": 0.1}}}]
    recipe = sample_recipe(space, Recorder({"1.prune_structured.ffn": 0.3 + 3 * 0.1}))  # 0.6000000000000001
    assert recipe == [{"prune_structured": {"ffn": 0.6}}]


def test_a_small_value_of_a_log_range_is_kept_as_sampled():
    space = [{"distill": {"lr": {"low": 1.0e-14, "high": 1.0e-12, "log": True}}}]
    assert sample_recipe(space, Recorder({"1.distill.lr": 3.0e-13})) == [{"distill": {"lr": 3.0e-13}}]


def test_an_optuna_study_samples_valid_recipes_within_the_space():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        recipe = sample_recipe(SPACE, trial)
        parse_recipe("x", recipe, lambda problem, fix: AssertionError(problem))  # a candidate's own check passes
        distill = next(step["distill"] for step in recipe if "distill" in step)
        assert 2 <= distill["layers"] <= 4 and distill["augment"] in (0, 1, 2) and 1.0e-5 <= distill["lr"] <= 1.0e-3
        assert isinstance(distill["layers"], int)
        study.tell(trial, [0.0, 0.0])
    distributions = {name for t in study.trials for name in t.distributions}
    assert {"1.trim_vocab", "2.distill.layers", "4.quantize.mode"} <= distributions


def test_recipe_keys_are_stable_and_tell_recipes_apart():
    recipe = [{"distill": {"layers": 3, "augment": 1}}, {"quantize": {"mode": "static"}}]
    same = [{"distill": {"augment": 1, "layers": 3}}, {"quantize": {"mode": "static"}}]
    other = [{"distill": {"layers": 2, "augment": 1}}, {"quantize": {"mode": "static"}}]
    assert recipe_key(recipe) == recipe_key(same) != recipe_key(other)
    assert re.fullmatch(r"[0-9a-f]{10}", recipe_key(recipe))
    assert candidate_name(recipe) == f"search-{recipe_key(recipe)}"
    assert candidate_name(recipe, seed=7) == f"search-{recipe_key(recipe)}-s7"
    assert recipe_key({"seed": 7, "steps": recipe}) != recipe_key(recipe)


def test_a_recipe_in_the_space_is_drawn_back_from_its_parameters():
    recipe = [{"distill": {"student": "bert", "layers": 3, "augment": 2, "lr": 1.0e-4, "epochs": 1}},
              {"prune_structured": {"heads": 0.25}}, {"quantize": {"mode": "static"}}]
    params = recipe_params(SPACE, recipe, lambda problem, fix: AssertionError(problem))
    assert params == {"1.trim_vocab": False, "2.distill.layers": 3, "2.distill.augment": 2, "2.distill.lr": 1.0e-4,
                      "3.prune_structured": True, "3.prune_structured.heads": 0.25, "4.quantize.mode": "static"}
    assert sample_recipe(SPACE, Recorder(params)) == recipe


@pytest.mark.parametrize("recipe, said", [
    ([{"distill": {"student": "bert", "layers": 5, "augment": 0, "lr": 1.0e-4, "epochs": 1}}, {"quantize": {"mode": "static"}}],
     "at the space's step 2 (distill), layers 5 is outside 2..4"),
    ([{"distill": {"student": "bert", "layers": 2, "augment": 0, "lr": 1.0e-4, "epochs": 2}}, {"quantize": {"mode": "static"}}],
     "epochs is 2, the space's is 1"),
    ([{"distill": {"student": "bert", "layers": 2, "augment": 0, "lr": 1.0e-4, "epochs": 1}},
      {"prune_structured": {"heads": 0.3}}, {"quantize": {"mode": "static"}}],
     "did not take it: heads 0.3 is off the range's steps of 0.25 from 0.0"),
    ([{"distill": {"student": "bert", "layers": 2, "augment": 0, "lr": 1.0e-4, "epochs": 1}},
      {"quantize": {"mode": "static"}}, {"quantize": {"mode": "static"}}], "its steps from 3 ("),
    ([{"distill": {"student": "bert", "layers": 2, "augment": 0, "lr": 1.0e-4, "epochs": 1}}], "the recipe has no step 2"),
    ([{"quantize": {"mode": "static"}}], "its step 1 (quantize) is not distill"),
    ([], "must be a list of steps"),
    ([{"distill": "bert"}, {"quantize": {"mode": "static"}}], "arguments are not a mapping ('bert')"),
    ([{"distill": {"layer": 3}}, {"quantize": {"mode": "static"}}], "unknown argument 'layer'"),
])
def test_a_start_recipe_outside_the_space_says_where(tmp_path, recipe, said):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"search": {"space": SPACE, "start_from": [recipe]}}))
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert caught.value.key == "search.start_from[0]" and said in str(caught.value) and "Fix:" in str(caught.value)
