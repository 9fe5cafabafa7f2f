"""A Triton ensemble's steps, read from its model config.

Two spellings of one config are read alike: Triton's JSON (``/v2/models/<m>/config``, or a
config.pbtxt through protobuf's ``MessageToDict``: maps are objects, int64 are strings) and the
fit's small text-format parser (maps are ``{key, value}`` pairs, repeated fields lists or not).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EnsembleStep:
    model: str
    version: int  # -1: the newest loaded version
    inputs: dict[str, str]  # the step model's input name -> ensemble tensor
    outputs: dict[str, str]  # the step model's output name -> ensemble tensor


def is_ensemble(config: Mapping[str, Any]) -> bool:
    return config.get("platform") == "ensemble"


def _map(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping) and "key" not in value:
        return {str(k): str(v) for k, v in value.items()}  # protobuf JSON
    items = value if isinstance(value, list) else [value] if value else []
    return {str(item["key"]): str(item["value"]) for item in items}


def ensemble_steps(config: Mapping[str, Any]) -> list[EnsembleStep]:
    """The steps in config order; none for a model that is not an ensemble."""
    steps = (config.get("ensemble_scheduling") or {}).get("step") or []
    if isinstance(steps, Mapping):
        steps = [steps]
    return [
        EnsembleStep(
            model=str(step["model_name"]),
            version=int(step.get("model_version", -1)),
            inputs=_map(step.get("input_map")),
            outputs=_map(step.get("output_map")),
        )
        for step in steps
    ]
