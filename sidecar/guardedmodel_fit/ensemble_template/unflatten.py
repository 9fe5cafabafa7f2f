"""Triton Python-backend model: the ensemble's preprocessing step.

Takes ``IMAGE`` (FP32, [784]: a flattened 28x28 grey image, as clients of a flat-vector API send
it) and gives ``PIXELS`` (FP32, [1, 28, 28]: the classifier's input layout).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            image = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            pixels = np.ascontiguousarray(image.reshape(image.shape[0], 1, 28, 28), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PIXELS", pixels)]))
        return responses
