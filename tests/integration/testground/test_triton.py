"""The real Triton from the nvidia-pytriton wheel serves a model over HTTP and gRPC."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

pytestmark = pytest.mark.integration

MODEL_PY = textwrap.dedent(
    '''
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        """y = 2x + 1, in numpy: enough to prove a request crossed Triton and back."""

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
                y = (2.0 * x + 1.0).astype(np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", y)]))
            return responses
    '''
)

CONFIG = textwrap.dedent(
    """
    name: "affine"
    backend: "python"
    max_batch_size: 8
    input [{ name: "X", data_type: TYPE_FP32, dims: [ 4 ] }]
    output [{ name: "Y", data_type: TYPE_FP32, dims: [ 4 ] }]
    instance_group [{ kind: KIND_CPU, count: 1 }]
    """
)


def write_affine_model(repository: Path) -> None:
    model = repository / "affine"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(CONFIG)
    (model / "1" / "model.py").write_text(MODEL_PY)


def test_inference_over_http_and_grpc(tmp_path: Path, triton_server_factory) -> None:
    repository = tmp_path / "models"
    write_affine_model(repository)
    server = triton_server_factory(repository)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)

    http = httpclient.InferenceServerClient(server.http_url)
    assert http.is_model_ready("affine")
    http_input = httpclient.InferInput("X", list(x.shape), "FP32")
    http_input.set_data_from_numpy(x, binary_data=True)
    http_result = http.infer("affine", [http_input]).as_numpy("Y")

    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    grpc_input = grpcclient.InferInput("X", list(x.shape), "FP32")
    grpc_input.set_data_from_numpy(x)
    grpc_result = grpc.infer("affine", [grpc_input]).as_numpy("Y")

    np.testing.assert_array_equal(http_result, 2 * x + 1)
    np.testing.assert_array_equal(grpc_result, 2 * x + 1)


def test_explicit_mode_loads_models_through_the_repository_api(tmp_path: Path, triton_server_factory) -> None:
    repository = tmp_path / "models"
    write_affine_model(repository)
    server = triton_server_factory(repository, model_control_mode="explicit")
    client = httpclient.InferenceServerClient(server.http_url)
    assert not client.is_model_ready("affine")
    client.load_model("affine")
    assert client.is_model_ready("affine")
    client.unload_model("affine")
    assert not client.is_model_ready("affine")
