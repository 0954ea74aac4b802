"""Tests for textcompress.config.load_params and the recipe helpers in textcompress.techniques."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from textcompress.config import DEFAULTS, REQUIRED_CANDIDATES, load_params
from textcompress.errors import ParamsError
from textcompress.techniques import recipe_families, validate_recipe

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_CANDIDATES = {"teacher": [], "int8-dynamic": [{"quantize": {"mode": "dynamic"}}]}


@pytest.fixture
def write_params(tmp_path):
    def write(content) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


def with_candidates(**extra) -> dict:
    return {"candidates": {**copy.deepcopy(BASE_CANDIDATES), **extra}}


def raises_params_error(path, key):
    """Context: load_params(path) raises ParamsError whose key and message name `key`."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(ParamsError)
            self.excinfo = self._ctx.__enter__()
            return self.excinfo

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)  # fails the test if nothing was raised
            if not handled:
                return False  # some other exception: let it propagate unchanged
            assert self.excinfo.value.key == key
            assert f"`{key}`" in str(self.excinfo.value)
            assert str(path) in str(self.excinfo.value)
            return handled

    return _Check()


# ---------------------------------------------------------------------------
# Defaults and merging


def test_empty_file_gives_defaults(write_params):
    assert load_params(write_params("")) == DEFAULTS


def test_defaults_merge_with_overrides(write_params):
    params = load_params(write_params({"seed": 7, "data": {"max_length": 64}, "teach": {"epochs": 0}}))
    assert params["seed"] == 7
    assert params["data"]["max_length"] == 64
    # siblings of an overridden key keep their defaults
    assert params["data"]["train"] == DEFAULTS["data"]["train"]
    assert params["data"]["text_column"] == "sentence"
    assert params["teach"]["epochs"] == 0
    assert params["teach"]["lr"] == DEFAULTS["teach"]["lr"]
    # untouched sections are complete
    assert params["export"] == DEFAULTS["export"]
    assert params["candidates"] == DEFAULTS["candidates"]


def test_loading_does_not_mutate_defaults(write_params):
    snapshot = copy.deepcopy(DEFAULTS)
    params = load_params(write_params({"data": {"max_length": 16}}))
    params["data"]["train"] = "changed"
    params["candidates"]["int8-dynamic"].append({"quantize": {}})
    assert DEFAULTS == snapshot


def test_candidates_replace_the_default_set(write_params):
    params = load_params(write_params(with_candidates(**{"distill-l2": [{"distill": {"layers": 2}}]})))
    assert set(params["candidates"]) == {"teacher", "int8-dynamic", "distill-l2"}
    assert params["candidates"]["distill-l2"] == [{"distill": {"layers": 2}}]


def test_project_params_yaml_loads():
    params = load_params(REPO_ROOT / "params.yaml")
    assert set(REQUIRED_CANDIDATES) <= set(params["candidates"])


def test_missing_file_raises(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")


# ---------------------------------------------------------------------------
# Unknown keys and invalid values


def test_unknown_top_level_key_is_named(write_params):
    path = write_params({"seeds": 1})
    with raises_params_error(path, "seeds") as excinfo:
        load_params(path)
    assert "not a known setting" in str(excinfo.value)


def test_unknown_nested_key_is_named(write_params):
    path = write_params({"data": {"max_lenght": 64}})
    with raises_params_error(path, "data.max_lenght"):
        load_params(path)


def test_section_must_be_a_mapping(write_params):
    path = write_params({"teach": 3})
    with raises_params_error(path, "teach"):
        load_params(path)


def test_top_level_must_be_a_mapping(write_params):
    with pytest.raises(ParamsError, match="mapping"):
        load_params(write_params("- a\n- b\n"))


@pytest.mark.parametrize("key, value", [
    ("data.max_length", 0), ("data.max_length", 1.5), ("data.max_length", True),
    ("teach.lr", -1.0), ("teach.batch_size", "32"), ("benchmark.threads", 0),
    ("teach.epochs", -1), ("teach.pooling", "max"), ("promotion.max_accuracy_drop", "1"),
    ("evaluate.bound_level", 0.5), ("evaluate.bound_level", 1.0), ("promotion.budget_on", "mean"),
])
def test_invalid_values_name_their_key(write_params, key, value):
    section, name = key.split(".")
    path = write_params({section: {name: value}})
    with raises_params_error(path, key):
        load_params(path)


@pytest.mark.parametrize("content, line", [
    ("seed: 1\ndata:\n\tmax_length: 64\n", 3),                       # tab indentation
    ("seed: 1\nteach:\n  epochs: 2\n lr: 3\n", 4),                    # bad dedent
    ("seed: 1\nbenchmark:\n  threads: 1\n  warmup: @x\n", 4),         # reserved character
    ("seed: 1\ndata:\n  validation: [unclosed\n  max_length: 64\n", 4),  # unclosed flow sequence
])
def test_invalid_yaml_names_the_line(write_params, content, line):
    path = write_params(content)
    with raises_params_error(path, f"line {line}") as excinfo:
        load_params(path)
    assert "not valid YAML" in str(excinfo.value)


# ---------------------------------------------------------------------------
# Candidates and recipes


def test_unknown_technique_names_candidate(write_params):
    path = write_params(with_candidates(pruned=[{"prune": {"amount": 0.5}}]))
    with raises_params_error(path, "candidates.pruned") as excinfo:
        load_params(path)
    assert "unknown technique 'prune'" in str(excinfo.value)


def test_unknown_argument_names_candidate(write_params):
    path = write_params(with_candidates(small=[{"distill": {"layers": 2, "depth": 3}}]))
    with raises_params_error(path, "candidates.small") as excinfo:
        load_params(path)
    assert "unknown argument 'depth'" in str(excinfo.value)


def test_bad_choice_names_candidate(write_params):
    path = write_params(with_candidates(q=[{"quantize": {"mode": "foo"}}]))
    with raises_params_error(path, "candidates.q") as excinfo:
        load_params(path)
    assert "mode='foo'" in str(excinfo.value)


def test_bad_choice_in_required_candidate(write_params):
    path = write_params({"candidates": {"teacher": [], "int8-dynamic": [{"quantize": {"mode": "int4"}}]}})
    with raises_params_error(path, "candidates.int8-dynamic"):
        load_params(path)


@pytest.mark.parametrize("recipe", [{"quantize": {"mode": "dynamic"}}, "quantize", None, 3])
def test_non_list_recipe_names_candidate(write_params, recipe):
    path = write_params(with_candidates(odd=recipe))
    with raises_params_error(path, "candidates.odd") as excinfo:
        load_params(path)
    assert "must be a list" in str(excinfo.value)


@pytest.mark.parametrize("step", [{"distill": {}, "quantize": {}}, "quantize", {"quantize": [1]}])
def test_malformed_step_names_candidate(write_params, step):
    path = write_params(with_candidates(odd=[step]))
    with raises_params_error(path, "candidates.odd"):
        load_params(path)


def test_compress_step_after_export_step_names_candidate(write_params):
    path = write_params(with_candidates(backwards=[{"quantize": {}}, {"distill": {}}]))
    with raises_params_error(path, "candidates.backwards") as excinfo:
        load_params(path)
    assert "after an ONNX-level step" in str(excinfo.value)


@pytest.mark.parametrize("block", [[32], [0, 4], [4, 2.5], "32x32"])
def test_a_malformed_movement_block_is_refused(write_params, block):
    path = write_params(with_candidates(blocky=[{"prune_movement": {"block": block}}]))
    with raises_params_error(path, "candidates.blocky"):
        load_params(path)


@pytest.mark.parametrize("later", [{"quantize": {"mode": "static"}}, {"prune_structured": {}}])
def test_a_step_after_qat_is_refused(write_params, later):
    path = write_params(with_candidates(late=[{"qat": {}}, later]))
    with raises_params_error(path, "candidates.late") as excinfo:
        load_params(path)
    assert "follows qat, which must come last" in str(excinfo.value)


@pytest.mark.parametrize("later,message", [
    ({"prune_movement": {}}, "step 2 (prune_movement) works on transformer models, but step 1 made a lstm student"),
    ({"factorize_embedding": {}}, "step 2 (factorize_embedding) works on transformer models"),
])
def test_a_transformer_step_after_a_word_level_student_names_both_steps(write_params, later, message):
    path = write_params(with_candidates(rnn=[{"distill": {"student": "lstm", "layers": 1}}, later]))
    with raises_params_error(path, "candidates.rnn") as excinfo:
        load_params(path)
    assert message in str(excinfo.value) and "distill: {student: same}" in str(excinfo.value)


@pytest.mark.parametrize("key,value", [("width", 256), ("layer_map", [1]), ("hidden_weight", 1.0)])
def test_bert_only_arguments_are_refused_for_a_word_level_student(write_params, key, value):
    path = write_params(with_candidates(cnn=[{"distill": {"student": "cnn", key: value}}]))
    with raises_params_error(path, "candidates.cnn") as excinfo:
        load_params(path)
    assert f"{key} applies to bert students, not cnn" in str(excinfo.value)


def test_a_word_level_student_may_be_recovered_and_quantized(write_params):
    params = load_params(write_params(with_candidates(rnn=[
        {"distill": {"student": "gru", "layers": 1}}, {"distill": {"student": "same", "epochs": 1}},
        {"quantize": {"mode": "dynamic"}}])))
    assert len(params["candidates"]["rnn"]) == 3


def test_bad_candidate_name(write_params):
    path = write_params(with_candidates(**{"bad name!": []}))
    with raises_params_error(path, "candidates.bad name!"):
        load_params(path)


@pytest.mark.parametrize("required", ["teacher", "int8-dynamic"])
def test_removing_required_candidate_raises(write_params, required):
    candidates = {name: recipe for name, recipe in BASE_CANDIDATES.items() if name != required}
    path = write_params({"candidates": candidates})
    with raises_params_error(path, f"candidates.{required}") as excinfo:
        load_params(path)
    assert "missing" in str(excinfo.value)


def test_candidates_must_be_a_mapping(write_params):
    path = write_params({"candidates": [{"teacher": []}]})
    with raises_params_error(path, "candidates"):
        load_params(path)


def test_valid_recipes_pass(write_params):
    params = load_params(write_params(with_candidates(
        both=[{"distill": {"student": "bert", "layers": 2}}, {"quantize": {"mode": "dynamic", "per_channel": True}}],
        plain=[{"distill": None}],
    )))
    assert "both" in params["candidates"] and "plain" in params["candidates"]


def test_validate_recipe_calls_error_factory():
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        validate_recipe([{"quantize": {"mode": "foo"}}], lambda problem, fix: Boom(problem, fix))
    validate_recipe([], lambda problem, fix: Boom(problem, fix))  # empty recipe (the teacher) is valid


# ---------------------------------------------------------------------------
# recipe_families


def test_recipe_families_in_order():
    assert recipe_families([{"distill": {}}, {"quantize": {}}]) == ["distillation", "quantization"]


def test_recipe_families_empty():
    assert recipe_families([]) == []


def test_recipe_families_skips_recovery_distillation_and_dedups():
    assert recipe_families([{"distill": {"student": "same"}}, {"quantize": None}]) == ["quantization"]
    assert recipe_families([{"distill": {}}, {"distill": {"layers": 1}}]) == ["distillation"]


@pytest.mark.parametrize("step, key", [
    ({"prune_structured": {"heads": 1.0}}, "heads"),          # removing every head is impossible
    ({"distill": {"layers": 0}}, "layers"),                   # a student needs a layer
    ({"prune_magnitude": {"sparsity": 1.5}}, "sparsity"),
    ({"low_rank": {"modules": "ffn"}}, "one of rank, ratio or energy"),
    ({"low_rank": {"rank": 8, "energy": 0.9}}, "one of rank, ratio or energy"),
    ({"attention": {"kind": "sparse"}}, "kind"),
    ({"quantize": {"mode": "static", "method": "mse"}}, "method"),
])
def test_impossible_technique_arguments_are_refused_at_load(write_params, step, key):
    path = write_params(with_candidates(odd=[step]))
    with raises_params_error(path, "candidates.odd") as excinfo:
        load_params(path)
    assert key in str(excinfo.value)


# ---------------------------------------------------------------------------
# Recurrent teachers (teach.architecture)


def lstm_teacher(**candidates) -> dict:
    return {"teach": {"architecture": "lstm"}, **with_candidates(**candidates)}


def test_a_recurrent_teacher_with_recurrent_steps_loads(write_params):
    params = load_params(write_params(lstm_teacher(recipes=[
        {"prune_structured": {"units": 0.5}}, {"low_rank": {"modules": "recurrent", "energy": 0.9}},
        {"share_layers": {"share": "directions"}}, {"trim_vocab": {}}, {"quantize": {"mode": "dynamic"}}],
        student=[{"distill": {"student": "lstm", "hidden_size": 64}}, {"prune_magnitude": {"sparsity": 0.5}}])))
    assert params["teach"]["architecture"] == "lstm" and params["teach"]["recurrent"]["hidden_size"] == 300


@pytest.mark.parametrize("architecture,step,message", [
    # on an LSTM teacher: steps and arguments with no recurrent form
    ("lstm", {"prune_movement": {}}, "step 1 (prune_movement) works on transformer models, but the teacher is an LSTM/GRU"),
    ("lstm", {"attention": {"kind": "linear"}}, "step 1 (attention) works on transformer models, but the teacher is an LSTM/GRU"),
    ("lstm", {"distill": {"student": "bert"}}, "a bert student is cut from a transformer's layers"),
    ("lstm", {"prune_structured": {}}, "an LSTM/GRU is pruned by hidden units"),
    ("lstm", {"prune_structured": {"units": 0.5, "heads": 0.5}}, "heads and ffn apply to transformers"),
    ("lstm", {"low_rank": {"modules": "ffn", "rank": 8}}, "modules: ffn names transformer layers"),
    ("lstm", {"share_layers": {"share": "all"}}, "shares weights between its two directions"),
    ("lstm", {"drop_layers": {"strategy": "alternate"}}, "use strategy: top"),
    ("lstm", {"distill": {"student": "same", "hidden_weight": 1.0}}, "hidden_weight compares transformer layers"),
    ("lstm", {"qat": {}}, "step 1 (qat) works on transformer models, but the teacher is an LSTM/GRU"),
    # on a transformer teacher: the recurrent-only arguments
    ("transformer", {"prune_structured": {"units": 0.5}}, "units applies to LSTM/GRU models"),
    ("transformer", {"low_rank": {"modules": "hidden", "rank": 8}}, "modules: hidden applies to LSTM/GRU models"),
    ("transformer", {"share_layers": {"share": "directions"}}, "share: directions applies to bidirectional LSTM/GRU models"),
])
def test_a_step_that_does_not_fit_the_teachers_architecture_is_refused_with_the_reason(write_params, architecture, step,
                                                                                       message):
    path = write_params({"teach": {"architecture": architecture}, **with_candidates(odd=[step])})
    with raises_params_error(path, "candidates.odd") as excinfo:
        load_params(path)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("teach,key", [
    ({"architecture": "transformerxl"}, "teach.architecture"),
    ({"architecture": "gru", "recurrent": {"hidden_size": 0}}, "teach.recurrent.hidden_size"),
    ({"architecture": "lstm", "recurrent": {"pooling": "sum"}}, "teach.recurrent.pooling"),
    ({"architecture": "lstm", "recurrent": {"embeddings": "glove"}}, "teach.recurrent.embeddings"),
    ({"architecture": "lstm", "recurrent": {"bidirectional": "yes"}}, "teach.recurrent.bidirectional"),
    ({"architecture": "lstm", "recurrent": {"cells": 2}}, "teach.recurrent.cells"),
])
def test_a_bad_recurrent_teacher_setting_is_named(write_params, teach, key):
    path = write_params({"teach": teach, **with_candidates()})
    with raises_params_error(path, key):
        load_params(path)


# ---------------------------------------------------------------------------
# A teacher that runs in transformers (its architecture does not convert into the encoder)

@pytest.fixture
def deberta_base(tmp_path):
    from tests.e2e.tiny_project import write_hf_checkpoint

    write_hf_checkpoint(tmp_path / "deberta", "deberta-v2")
    return str(tmp_path / "deberta")


def test_a_structural_step_on_a_transformers_teacher_is_refused_naming_the_step_and_what_to_use(write_params, deberta_base):
    path = write_params({"base_model": deberta_base, **with_candidates(pruned=[{"prune_structured": {"heads": 0.5}}])})
    with raises_params_error(path, "candidates.pruned") as excinfo:
        load_params(path)
    message = str(excinfo.value)
    assert "step 1 (prune_structured) works on transformer and recurrent models, but the teacher is a model that " \
           "runs in transformers (not converted)" in message
    assert "Fix: on a model that runs in transformers (not converted) use distill, quantize" in message


@pytest.mark.parametrize("argument", ["hidden_weight", "width", "layer_map"])
def test_distilling_a_transformers_teacher_refuses_what_needs_its_layers(write_params, deberta_base, argument):
    value = [0] if argument == "layer_map" else 64 if argument == "width" else 1.0
    path = write_params({"base_model": deberta_base,
                         **with_candidates(small=[{"distill": {"student": "bert", argument: value}}])})
    with raises_params_error(path, "candidates.small") as excinfo:
        load_params(path)
    assert f"{argument} needs the teacher's layers, and this teacher runs in transformers" in str(excinfo.value)


def test_after_a_bert_student_every_structural_step_applies_again(write_params, deberta_base):
    recipe = [{"distill": {"student": "bert", "layers": 1}}, {"prune_structured": {"heads": 0.5}},
              {"quantize": {"mode": "dynamic"}}]
    params = load_params(write_params({"base_model": deberta_base, **with_candidates(small=recipe)}))
    assert params["candidates"]["small"] == recipe


@pytest.mark.parametrize("recipe, message", [
    ([{"distill": {"student": "bert", "layers": 1}}, {"distill": {"student": "same", "hidden_weight": 1.0}}],
     "step 2 (distill): hidden_weight needs the teacher's layers, and the teacher runs in transformers"),
    ([{"distill": {"student": "bert", "layers": 1}}, {"prune_structured": {"heads": 0.5, "attention_weight": 1.0}}],
     "step 2 (prune_structured): attention_weight needs the teacher's layers"),
    ([{"distill": {"student": "bert", "layers": 1}}, {"distill": {"student": "same", "augment": 1}}],
     "step 2 (distill): augment has the teacher label new token sequences, and this student reads another tokenizer"),
])
def test_after_a_bert_student_what_needs_the_transformers_teachers_layers_or_tokenizer_is_still_refused(
        write_params, deberta_base, recipe, message):
    path = write_params({"base_model": deberta_base, **with_candidates(small=recipe)})
    with raises_params_error(path, "candidates.small") as excinfo:
        load_params(path)
    assert message in str(excinfo.value)


def test_an_lstm_student_of_a_transformers_teacher_may_use_augmentation(write_params, deberta_base):
    recipe = [{"distill": {"student": "lstm", "augment": 1}}, {"quantize": {"mode": "dynamic"}}]
    assert load_params(write_params({"base_model": deberta_base, **with_candidates(small=recipe)}))["candidates"]["small"] == recipe


def test_student_base_is_refused_where_the_student_is_cut_from_the_model(write_params):
    path = write_params(with_candidates(small=[{"distill": {"student": "bert", "student_base": "minilm-l6"}}]))
    with raises_params_error(path, "candidates.small") as excinfo:
        load_params(path)
    assert "student_base is where a bert student of a teacher that runs in transformers comes from" in str(excinfo.value)


# ---------------------------------------------------------------------------
# data: a user's own files (header, encoding, bad rows)


@pytest.mark.parametrize("data, key, says", [
    ({"bad_rows": "maybe"}, "data.bad_rows", "must be one of ['error', 'skip']"),
    ({"encoding": "klingon-8"}, "data.encoding", "unknown encoding 'klingon-8'"),
    ({"header": "no"}, "data.header", "must be true or false"),
    ({"header": False}, "data.text_column", "is the name 'sentence', but data.header is false"),
    ({"header": False, "text_column": 1, "label_column": "label"}, "data.label_column", "0-based positions"),
    ({"label_column": 0}, "data.label_column", "is the position 0, but data.header is true"),
    ({"header": False, "text_column": -1, "label_column": 0}, "data.text_column", "≥ 0"),
    ({"header": False, "text_column": 1, "label_column": 1}, "data.text_column", "the same column twice"),
    ({"header": False, "text_column": 1, "label_column": 0, "format": "jsonl"}, "data.header", "jsonl data names its columns"),
    ({"text_column": [1]}, "data.text_column", "must be a column name, or a 0-based position"),
])
def test_bad_data_layout_values_name_their_key(write_params, data, key, says):
    path = write_params({"data": data})
    with raises_params_error(path, key) as excinfo:
        load_params(path)
    assert says in excinfo.value.problem and excinfo.value.fix


def test_a_headerless_layout_takes_positions_and_the_new_keys_default_as_before(write_params):
    assert (DEFAULTS["data"]["header"], DEFAULTS["data"]["encoding"], DEFAULTS["data"]["bad_rows"]) == (True, "utf-8", "error")
    data = load_params(write_params({"data": {"header": False, "text_column": 1, "text_pair_column": 2, "label_column": 0,
                                              "encoding": "latin-1", "bad_rows": "skip"}}))["data"]
    assert (data["text_column"], data["text_pair_column"], data["label_column"]) == (1, 2, 0)
    assert (data["encoding"], data["bad_rows"]) == ("latin-1", "skip")


# ---------------------------------------------------------------------------
# A candidate with its own seed: {seed: N, steps: [...]}

SEEDED_STEPS = [{"quantize": {"mode": "dynamic"}}]


def test_a_candidate_may_be_written_with_its_own_seed(write_params):
    from textcompress.techniques import candidate_recipe

    params = load_params(write_params(with_candidates(seeded={"seed": 7, "steps": SEEDED_STEPS})))
    seeded, plain = candidate_recipe(params, "seeded"), candidate_recipe(params, "int8-dynamic")
    assert seeded.seed == 7 and plain.seed is None
    assert [s.name for s in seeded.steps] == [s.name for s in plain.steps] == ["quantize"]
    assert seeded.trained_seed(42) == 7 and plain.trained_seed(42) == 42
    # as_params gives each back in the form it was written in
    assert seeded.as_params() == {"seed": 7, "steps": SEEDED_STEPS}
    assert plain.as_params() == SEEDED_STEPS
    assert recipe_families({"seed": 0, "steps": SEEDED_STEPS}) == ["quantization"]


@pytest.mark.parametrize("seed", [-1, 1.5, True, "7", None])
def test_a_bad_candidate_seed_names_its_key(write_params, seed):
    path = write_params(with_candidates(seeded={"seed": seed, "steps": SEEDED_STEPS}))
    with raises_params_error(path, "candidates.seeded.seed") as excinfo:
        load_params(path)
    assert "whole number ≥ 0" in str(excinfo.value) and "Fix: e.g. seed: 7" in str(excinfo.value)


def test_an_unknown_key_of_a_seeded_candidate_is_named_with_the_fix(write_params):
    path = write_params(with_candidates(seeded={"seed": 7, "steps": SEEDED_STEPS, "epochs": 2}))
    with raises_params_error(path, "candidates.seeded.epochs") as excinfo:
        load_params(path)
    assert "seed and steps only" in str(excinfo.value) and "Fix: remove epochs" in str(excinfo.value)


@pytest.mark.parametrize("written, key", [({"steps": SEEDED_STEPS}, "seed"), ({"seed": 7}, "steps")])
def test_a_seeded_candidate_needs_both_seed_and_steps(write_params, written, key):
    path = write_params(with_candidates(seeded=written))
    with raises_params_error(path, f"candidates.seeded.{key}") as excinfo:
        load_params(path)
    assert "is missing" in str(excinfo.value) and "Fix:" in str(excinfo.value)


def test_the_steps_of_a_seeded_candidate_are_checked_like_any_recipe(write_params):
    path = write_params(with_candidates(seeded={"seed": 7, "steps": [{"quantize": {"mode": "foo"}}]}))
    with raises_params_error(path, "candidates.seeded") as excinfo:
        load_params(path)
    assert "mode='foo'" in str(excinfo.value)


def test_a_bad_seed_met_at_stage_time_names_its_key():
    from textcompress.techniques import candidate_recipe

    params = copy.deepcopy(DEFAULTS)
    params["candidates"]["seeded"] = {"seed": -3, "steps": SEEDED_STEPS}  # as a stage sees params it did not load
    with pytest.raises(ParamsError) as excinfo:
        candidate_recipe(params, "seeded")
    assert excinfo.value.key == "candidates.seeded.seed"


def test_readers_of_steps_alone_see_a_seeded_candidates_steps():
    from textcompress.config import with_step_lists

    params = {**DEFAULTS, "candidates": {**BASE_CANDIDATES, "seeded": {"seed": 7, "steps": SEEDED_STEPS}}}
    assert with_step_lists(params)["candidates"] == {**BASE_CANDIDATES, "seeded": SEEDED_STEPS}
    assert params["candidates"]["seeded"] == {"seed": 7, "steps": SEEDED_STEPS}  # not changed in place
