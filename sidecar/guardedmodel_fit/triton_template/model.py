"""Triton Python-backend model: runs ``network.py`` over ``weights.npz`` in this version folder.

Outputs LOGITS (FP32, [classes]) and FEATURES (FP32, the penultimate layer) so the guard
sidecar can compute feature-based OOD scores. Requests of one execution are run as one batch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        version_dir = Path(args["model_repository"]) / str(args["model_version"])
        spec = importlib.util.spec_from_file_location(
            "guardedmodel_example_network", version_dir / "network.py"
        )
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot import {version_dir / 'network.py'}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.forward = module.load(version_dir)

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = []
        for request in requests:
            inputs.append(pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy())
        sizes = [x.shape[0] for x in inputs]
        try:
            logits, features = self.forward(np.concatenate(inputs))
        except Exception as exc:  # report per request instead of crashing the model
            error = pb_utils.TritonError(f"forward pass failed: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            stop = start + size
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("LOGITS", np.ascontiguousarray(logits[start:stop])),
                        pb_utils.Tensor("FEATURES", np.ascontiguousarray(features[start:stop])),
                    ]
                )
            )
            start = stop
        return responses
