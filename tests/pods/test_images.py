"""The images the real-pod tier runs: built daemonless from our Dockerfile, cached, and runnable.

Builds take minutes the first time on a machine and are cached by content
hash afterwards (docs/images.md). Needs root, buildah and mmdebstrap
(`make pod-deps`).
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardedmodel_testground import images
from guardedmodel_testground.procs import free_port, http_ok, wait_until

pytestmark = pytest.mark.pods


@pytest.fixture(scope="module")
def product_image() -> images.BuiltImage:
    return images.ensure_product_image()


@pytest.fixture(scope="module")
def triton_image() -> images.BuiltImage:
    return images.ensure_triton_image()


@pytest.fixture(scope="module")
def product(product_image: images.BuiltImage) -> Iterator[str]:
    with images.working_container(product_image) as container:
        yield container


@pytest.fixture(scope="module")
def triton(triton_image: images.BuiltImage) -> Iterator[str]:
    with images.working_container(triton_image) as container:
        yield container


def _run(container: str, *command: str) -> str:
    result = images.run_in_container(container, command)
    assert result.returncode == 0, f"{command} failed in {container}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_product_image_runs_each_command_the_pod_runs(product: str) -> None:
    assert "operator" in _run(product, "guardedmodel", "--help")
    assert "--config" in _run(product, "guardedmodel", "sidecar", "--help")
    assert "--dest" in _run(product, "guardedmodel", "fetch-model", "--help")


def test_the_product_image_runs_as_its_non_root_uid(product_image: images.BuiltImage, product: str) -> None:
    config = _image_config(product_image)
    assert config["User"] == str(images.PRODUCT_UID)  # numeric, so runAsNonRoot can verify it
    assert _run(product, "python3", "-c", "import os; print(os.getuid())").strip() == str(images.PRODUCT_UID)


#: What the runtime must not carry: the fit's and tests' packages, the API client package the sidecar
#: replaced with its own credential loading, pip, and the test ground.
NOT_IN_THE_IMAGE = ("torch", "pip", "matplotlib", "scipy", "sklearn", "kubernetes", "guardedmodel_testground")


def test_the_product_image_carries_the_runtime_only(product: str) -> None:
    probe = f"import importlib.util as u; print([m for m in {NOT_IN_THE_IMAGE!r} if u.find_spec(m)])"
    assert _run(product, "python3", "-c", probe).strip() == "[]"
    # Asked for in the image, the test ground's commands say what they need instead of a traceback.
    result = images.run_in_container(product, ["guardedmodel", "cluster", "status"])
    assert result.returncode == 2 and "source checkout" in result.stderr, result.stderr
    # The runtime packages are there: the sidecar's imports resolve.
    _run(product, "python3", "-c", "import guardedmodel_sidecar.app, guardedmodel_operator.handlers")


def test_the_archive_names_the_image_for_containerd(product_image: images.BuiltImage) -> None:
    with tarfile.open(product_image.archive) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == [product_image.reference]


def test_a_second_call_with_nothing_changed_is_a_cache_hit(triton_image: images.BuiltImage) -> None:
    started = time.monotonic()
    again = images.ensure_triton_image()
    assert time.monotonic() - started < 2.0
    assert again == triton_image


def test_checking_the_product_key_is_quick(product_image: images.BuiltImage) -> None:
    """The hit path of the product image: hash the build context, find the marker."""
    base = images.ensure_base_image(images.PYTHON_BASE)
    started = time.monotonic()
    images.product_key(base, images.tool_versions())
    assert time.monotonic() - started < 2.0


def test_the_key_follows_the_build_context(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    before = images.digest_files(tmp_path, ["a.py"])
    (tmp_path / "a.py").write_text("x = 2\n")
    assert images.digest_files(tmp_path, ["a.py"]) != before


MODEL_PY = textwrap.dedent(
    """
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            return [
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor("Y", (2.0 * pb_utils.get_input_tensor_by_name(r, "X").as_numpy() + 1.0).astype(np.float32))]
                )
                for r in requests
            ]
    """
)

CONFIG = textwrap.dedent(
    """
    name: "affine"
    backend: "python"
    max_batch_size: 8
    input [{ name: "X", data_type: TYPE_FP32, dims: [ 2 ] }]
    output [{ name: "Y", data_type: TYPE_FP32, dims: [ 2 ] }]
    instance_group [{ kind: KIND_CPU, count: 1 }]
    """
)


def test_the_triton_image_prints_its_usage_as_a_non_root_user(
    triton_image: images.BuiltImage, triton: str
) -> None:
    assert _image_config(triton_image)["User"] == str(images.TRITON_UID)
    result = images.run_in_container(triton, ["tritonserver", "--help"])
    assert "--model-repository" in result.stdout + result.stderr


@pytest.fixture
def triton_serving(triton: str, tmp_path: Path) -> Iterator[int]:
    """tritonserver in its image, serving a Python-backend model on a free loopback port."""
    repository = tmp_path / "models"
    (repository / "affine" / "1").mkdir(parents=True)
    (repository / "affine" / "config.pbtxt").write_text(CONFIG)
    (repository / "affine" / "1" / "model.py").write_text(MODEL_PY)
    images.copy_into(triton, repository, "/models")
    http_port = free_port()
    command = [
        "tritonserver",
        "--model-repository=/models",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--exit-on-error=true",
    ]
    with images.serve_in_container(triton, command, log_path=tmp_path / "triton.log") as process:
        ready = f"http://127.0.0.1:{http_port}/v2/models/affine/ready"
        wait_until("Triton in its image", lambda: http_ok(ready), 120, process=process)
        yield http_port


def test_the_triton_image_serves_a_python_backend_model(triton_serving: int) -> None:
    body = {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{triton_serving}/v2/models/affine/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    assert answer["outputs"][0]["data"] == [3.0, 5.0]


def _image_config(image: images.BuiltImage) -> dict[str, object]:
    out = subprocess.run(
        images.buildah_argv("inspect", "--type", "image", image.reference),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config: dict[str, object] = json.loads(out)["OCIv1"]["config"]
    return config
