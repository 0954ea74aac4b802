"""The technique registry: a technique is its module's declaration, found without being listed."""

from __future__ import annotations

import textwrap

import pytest

import textcompress.techniques as techniques
from textcompress.config import load_params
from textcompress.errors import ParamsError
from textcompress.techniques import Technique, parse_recipe, registry

MADE_UP = textwrap.dedent('''
    """A made-up technique, as a new module would declare one."""
    from textcompress.techniques.base import Technique


    def apply_halve_head(model, args, ctx):
        return model, {"factor": args["factor"]}


    TECHNIQUES = (Technique("halve_head", "pruning", defaults={"factor": 0.5}, bounds={"factor": (0, 1)},
                            apply=apply_halve_head),)
''')


@pytest.fixture
def made_up_module(tmp_path, monkeypatch):
    """A module in a folder that is part of the package, as a new file in textcompress/techniques/ would be."""
    (tmp_path / "made_up.py").write_text(MADE_UP)
    monkeypatch.setattr(techniques, "__path__", [*techniques.__path__, str(tmp_path)])
    registry.cache_clear()
    yield
    registry.cache_clear()


def error(problem, fix):
    return ValueError(f"{problem}. Fix: {fix}")


def test_a_new_module_is_all_a_technique_needs(made_up_module, tmp_path):
    assert "halve_head" in registry()
    recipe = parse_recipe("odd", [{"halve_head": {"factor": 0.25}}, {"quantize": {}}], error)
    assert [s.name for s in recipe.compress_steps] == ["halve_head"] and recipe.families == ["pruning", "quantization"]
    params = tmp_path / "params.yaml"
    params.write_text("candidates:\n  teacher: []\n  int8-dynamic: [{quantize: {mode: dynamic}}]\n"
                      "  odd: [{halve_head: {factor: 0.25}}]\n")
    assert load_params(params)["candidates"]["odd"] == [{"halve_head": {"factor": 0.25}}]
    params.write_text("candidates:\n  teacher: []\n  int8-dynamic: [{quantize: {mode: dynamic}}]\n"
                      "  odd: [{halve_head: {factor: 2}}]\n")
    with pytest.raises(ParamsError, match="factor=2 is out of range"):
        load_params(params)


def test_without_the_module_the_step_is_unknown():
    with pytest.raises(ValueError, match="unknown technique 'halve_head'"):
        parse_recipe("odd", [{"halve_head": {}}], error)


def test_every_declared_technique_is_whole():
    """Each step runs somewhere, belongs to a family and has a default for every bounded or closed argument."""
    for name, technique in registry().items():
        assert technique.apply or technique.export, name
        assert set(technique.bounds) | set(technique.choices) <= set(technique.defaults) | {"logit_loss", "teacher_states"}, name


def test_a_declaration_with_neither_apply_nor_export_is_refused():
    with pytest.raises(TypeError, match="neither apply nor export"):
        Technique("nothing", "pruning", defaults={})


def test_the_recipe_is_typed_and_split_by_where_each_step_runs():
    recipe = parse_recipe("q", [{"distill": {"layers": 1}}, {"qat": {}}], error)
    assert [s.name for s in recipe.compress_steps] == ["distill", "qat"]
    assert [s.name for s in recipe.export_steps] == ["qat"]  # qat declares its int8 export
    assert recipe.steps[0].args["layers"] == 1 and recipe.steps[0].args["epochs"] == 3.0  # defaults filled
    assert recipe.as_params() == [{"distill": {"layers": 1}}, {"qat": {}}]
    with pytest.raises(TypeError):
        recipe.steps[0].args["layers"] = 2  # read-only
