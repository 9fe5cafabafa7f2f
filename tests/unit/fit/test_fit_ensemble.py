"""Reading a Triton ensemble's config: its steps, the ensemble output that publishes a step's
features, and what ``open_model`` does with an ensemble directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardedmodel_fit.ensemble import resolve_features_output
from guardedmodel_fit.example_ensemble import (
    ENSEMBLE_FEATURES,
    ENSEMBLE_INPUT,
    STEP_NAME,
    STEP_OUTPUT,
    ensemble_config_pbtxt,
    step_config_pbtxt,
)
from guardedmodel_fit.example_network import MODEL_NAME, config_pbtxt
from guardedmodel_fit.extract import ModelError, open_model, parse_pbtxt
from guardedmodel_sidecar.ensemble import EnsembleStep, ensemble_steps, is_ensemble
from guardedmodel_sidecar.model_loader import local_model_config

CHAIN = parse_pbtxt(ensemble_config_pbtxt())


def chain_with(outputs: str, classifier_map: str) -> dict:
    """A two-step chain whose classifier step maps ``classifier_map`` and publishes ``outputs``."""
    return parse_pbtxt(f"""
name: "c"
platform: "ensemble"
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {outputs} ]
ensemble_scheduling {{
  step [
    {{ model_name: "pre" model_version: 2 input_map {{ key: "A" value: "X" }} output_map {{ key: "B" value: "b" }} }},
    {{ model_name: "clf" model_version: -1 input_map {{ key: "IN" value: "b" }} {classifier_map} }}
  ]
}}
""")


def test_the_example_chain_parses_into_its_steps() -> None:
    assert is_ensemble(CHAIN)
    assert ensemble_steps(CHAIN) == [
        EnsembleStep(STEP_NAME, -1, {ENSEMBLE_INPUT: ENSEMBLE_INPUT}, {STEP_OUTPUT: "pixels"}),
        EnsembleStep(
            MODEL_NAME, -1, {"INPUT": "pixels"}, {"LOGITS": "LOGITS", "FEATURES": ENSEMBLE_FEATURES}
        ),
    ]
    assert ensemble_config_pbtxt(classifier_version=3).count("model_version: 3") == 1
    for plain in (config_pbtxt(), step_config_pbtxt()):
        assert not is_ensemble(parse_pbtxt(plain))
        assert ensemble_steps(parse_pbtxt(plain)) == []


def test_a_step_output_resolves_to_the_ensemble_output_publishing_it() -> None:
    assert resolve_features_output(CHAIN, "FEATURES") == ENSEMBLE_FEATURES  # the step's own name
    assert resolve_features_output(CHAIN, ENSEMBLE_FEATURES) == ENSEMBLE_FEATURES  # the ensemble's
    assert resolve_features_output(CHAIN, "LOGITS") == "LOGITS"  # a one-pair map, published as is
    assert resolve_features_output(CHAIN, "PENULTIMATE") is None  # no step gives it: no features


def test_a_step_output_the_ensemble_does_not_publish_is_refused_with_the_fix() -> None:
    config = chain_with(
        '{ name: "LOGITS" data_type: TYPE_FP32 dims: [ 2 ] }',
        'output_map [ { key: "LOGITS" value: "LOGITS" }, { key: "FEATURES" value: "feat" } ]',
    )
    with pytest.raises(ValueError, match=r"step 'clf' gives 'FEATURES' as the ensemble tensor 'feat'.*add"):
        resolve_features_output(config, "FEATURES")


def test_a_name_two_steps_publish_must_be_chosen() -> None:
    config = chain_with(
        '{ name: "b" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "f" data_type: TYPE_FP32 dims: [ 4 ] }',
        'output_map { key: "B" value: "f" }',
    )
    with pytest.raises(ValueError, match=r"several steps give 'B'.*b \(from step pre\), f \(from step clf\)"):
        resolve_features_output(config, "B")
    assert resolve_features_output(config, "f") == "f"


def test_open_model_on_an_ensemble_needs_triton_and_checks_the_features(tmp_path: Path) -> None:
    chain = tmp_path / "chain"
    (chain / "1").mkdir(parents=True)
    (chain / "config.pbtxt").write_text(ensemble_config_pbtxt())
    with pytest.raises(ModelError, match=r"runs its steps only in Triton.*--triton-url"):
        open_model(chain, features_output="FEATURES")
    (chain / "config.pbtxt").write_text(
        ensemble_config_pbtxt().replace(f'name: "{ENSEMBLE_FEATURES}"', 'name: "X"')
    )
    with pytest.raises(ModelError, match="does not publish it"):
        open_model(chain, features_output="FEATURES")


def test_triton_json_and_the_fit_parser_read_the_same_steps(tmp_path: Path) -> None:
    (tmp_path / "chain").mkdir()
    (tmp_path / "chain" / "config.pbtxt").write_text(ensemble_config_pbtxt(classifier_version=2))
    as_triton_json = local_model_config(tmp_path, "chain")
    assert as_triton_json is not None and is_ensemble(as_triton_json)
    assert ensemble_steps(as_triton_json) == ensemble_steps(
        parse_pbtxt(ensemble_config_pbtxt(classifier_version=2))
    )
    assert [step.version for step in ensemble_steps(as_triton_json)] == [-1, 2]
