"""Keeping the versions routing needs loaded in Triton.

``ensure_loaded`` makes Triton hold every version routing keeps (stable, canary, the last good
version and a shadow candidate, so that a rollback is a routing flip, not a reload) by loading the model through the
repository API with a ``version_policy: specific`` override of its own configuration.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson

from guardedmodel_sidecar.upstream import TritonHttp

log = logging.getLogger(__name__)


class LoadError(RuntimeError):
    """Triton refused to load a version routing needs; the message carries Triton's reason."""


def local_model_config(repository: Path | None, model: str) -> dict[str, Any] | None:
    """The model's config.pbtxt as Triton's JSON config, when the repository is readable here."""
    if repository is None:
        return None
    path = Path(repository) / model / "config.pbtxt"
    try:
        text = path.read_text()
    except OSError:
        return None
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    try:
        message = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        log.warning("%s is not a valid model config (%s); Triton's own view is used", path, exc)
        return None
    config: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    config.setdefault("name", model)
    return config


async def ensure_loaded(
    triton: TritonHttp,
    model: str,
    versions: tuple[str, ...],
    local_config: dict[str, Any] | None = None,
) -> bool:
    """Load ``versions`` of ``model`` in Triton (explicit model control mode) if any is not ready.

    Returns True when a load was needed. The configuration sent is Triton's current one for the
    model, else the repository's config.pbtxt read locally, else (first load, no local copy) the one
    Triton reads with a plain load; in each case with the version policy replaced.
    """
    ready = [await _version_ready(triton, model, v) for v in versions]
    if all(ready):
        return False
    status, config = await triton.get_json(f"/v2/models/{model}/config")
    if status != 200 or not isinstance(config, dict):
        config = local_config
    if config is None:
        status, body = await triton.post_json(f"/v2/repository/models/{model}/load", {}, timeout_s=300)
        if status != 200:
            raise LoadError(f"Triton cannot load model '{model}': {_error(body, status)}")
        status, config = await triton.get_json(f"/v2/models/{model}/config")
        if status != 200 or not isinstance(config, dict):
            raise LoadError(
                f"Triton loaded '{model}' but does not return its config: {_error(config, status)}"
            )
    config = dict(config)
    config["version_policy"] = {"specific": {"versions": sorted({int(v) for v in versions})}}
    payload = {"parameters": {"config": orjson.dumps(config).decode()}}
    status, body = await triton.post_json(f"/v2/repository/models/{model}/load", payload, timeout_s=300)
    if status != 200:
        raise LoadError(
            f"Triton cannot load versions {', '.join(versions)} of '{model}': {_error(body, status)}"
        )
    missing = [v for v in versions if not await _version_ready(triton, model, v)]
    if missing:
        raise LoadError(f"Triton loaded '{model}' but versions {', '.join(missing)} are not ready")
    return True


async def _version_ready(triton: TritonHttp, model: str, version: str) -> bool:
    response = await triton.request("GET", f"/v2/models/{model}/versions/{version}/ready", timeout_s=5)
    return response.status == 200


def _error(body: Any, status: int) -> str:
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return f"HTTP {status}"
