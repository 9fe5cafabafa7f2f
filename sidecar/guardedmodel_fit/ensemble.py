"""Which output of a Triton ensemble (its config as ``parse_pbtxt`` gives it) publishes a step's
tensor.

The guard reads its features from the model's response, so an ensemble's features must be one of
the ensemble's outputs: a step's output reaches the client only through the ensemble's
``output_map`` and ``output`` list. ``resolve_features_output`` turns a name the user knows (the
step's own output, e.g. the classifier's ``FEATURES``) into the ensemble output that carries it,
or says how to publish it. The steps themselves are read by ``guardedmodel_sidecar.ensemble``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from guardedmodel_sidecar.ensemble import ensemble_steps


class EnsembleConfigError(ValueError):
    """The ensemble config cannot give what was asked; the message says what to change."""


def output_names(config: Mapping[str, Any]) -> list[str]:
    return [str(o.get("name")) for o in config.get("output", [])]


def resolve_features_output(config: Mapping[str, Any], name: str) -> str | None:
    """The ensemble output that carries ``name``: ``name`` itself when the ensemble publishes it,
    else the output a step's ``name`` output is mapped to; None when no step gives ``name`` (a
    chain without features). Raises when a step gives ``name`` but the ensemble does not publish
    it, or when several published outputs come from steps' ``name``."""
    published = output_names(config)
    if name in published:
        return name
    givers = [(step, step.outputs[name]) for step in ensemble_steps(config) if name in step.outputs]
    carried = [(step, tensor) for step, tensor in givers if tensor in published]
    if len(carried) == 1:
        return carried[0][1]
    ensemble = config.get("name", "the ensemble")
    if len(carried) > 1:
        options = ", ".join(f"{tensor} (from step {step.model})" for step, tensor in carried)
        raise EnsembleConfigError(
            f"{ensemble}: several steps give {name!r}; name the ensemble output to use: {options}"
        )
    if givers:
        step, tensor = givers[0]
        raise EnsembleConfigError(
            f"{ensemble}: step {step.model!r} gives {name!r} as the ensemble tensor {tensor!r}, but the "
            f"ensemble does not publish it: add {{ name: {tensor!r} ... }} to the ensemble's output list "
            f"(outputs now: {', '.join(published) or 'none'})"
        )
    return None
