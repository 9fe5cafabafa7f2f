"""Running a model over a data set to collect its logits and penultimate features.

``--model`` may name:
- a TorchScript file whose forward returns ``(logits, features)``, a dict with those outputs,
  or logits alone (then only logit-based methods can be fitted);
- a Triton model directory (``config.pbtxt`` + numbered versions). Its version is run by a live
  Triton server when ``triton_url`` is given (any backend, ensembles too: a step's output named as
  the features is read from the ensemble output it is published as), otherwise in-process from
  ``<version>/model.pt`` (TorchScript) or ``<version>/network.py`` (a numpy forward exposing
  ``load(version_dir)`` that returns ``forward(batch) -> (logits, features)``, as the examples do).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from guardedmodel_sidecar.ensemble import is_ensemble

from .data import DataError, Dataset
from .ensemble import EnsembleConfigError, resolve_features_output

TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".ts", ".torchscript"}


class ModelError(ValueError):
    """The model cannot be used for fitting as given; the message says what to change."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    input_name: str
    input_shape: tuple[int, ...] | None  # per-sample, when the model declares it
    logits_output: str
    features_output: str | None  # None: the model exposes no features
    input_datatype: str | None = None  # v2 name ("FP32"), when the model declares it


def _v2_datatype(config_type: object) -> str | None:
    """Triton's config type (TYPE_FP32, TYPE_STRING) as the protocol names it (FP32, BYTES)."""
    if not isinstance(config_type, str) or not config_type.startswith("TYPE_"):
        return None
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


class Extractor(Protocol):
    spec: ModelSpec

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


@dataclass(frozen=True, eq=False)
class Extracted:
    name: str
    logits: np.ndarray  # (n, C) float64
    features: np.ndarray | None  # (n, D) float64
    labels: np.ndarray | None
    inputs: np.ndarray  # the raw inputs, kept for the input reference


# ------------------------------------------------------------------------------------ extractors


class TorchScriptExtractor:
    def __init__(self, path: Path, spec: ModelSpec) -> None:
        import torch

        try:
            self._module = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{path}: not a loadable TorchScript model: {exc}") from exc
        self._torch = torch
        self.spec = spec
        self._features_seen: bool | None = None

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        torch = self._torch
        with torch.inference_mode():
            out = self._module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        logits, features = _split_outputs(out, self.spec)
        return logits, features


def _split_outputs(out: Any, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray | None]:
    def arr(t: Any) -> np.ndarray:
        return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)

    if isinstance(out, dict):
        logits = out.get(spec.logits_output, out.get("logits"))
        features = out.get(spec.features_output or "", out.get("features"))
        if logits is None:
            raise ModelError(
                f"{spec.name}: model output dict has no {spec.logits_output!r} (keys: {list(out)})"
            )
        return arr(logits), None if features is None else arr(features)
    if isinstance(out, tuple | list):
        if len(out) != 2:
            raise ModelError(f"{spec.name}: model returns {len(out)} outputs; expected (logits, features)")
        return arr(out[0]), arr(out[1])
    return arr(out), None


class NumpyNetworkExtractor:
    def __init__(self, version_dir: Path, spec: ModelSpec) -> None:
        source = version_dir / "network.py"
        module_spec = importlib.util.spec_from_file_location(
            f"_guard_network_{spec.name}_{spec.version}", source
        )
        if module_spec is None or module_spec.loader is None:
            raise ModelError(f"{source}: cannot import")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        load = getattr(module, "load", None)
        if not callable(load):
            raise ModelError(f"{source}: has no load(version_dir) function")
        self._forward: Callable[[np.ndarray], Any] = load(version_dir)
        self.spec = spec

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return _split_outputs(self._forward(batch), self.spec)


class TritonClientExtractor:
    def __init__(self, url: str, spec: ModelSpec) -> None:
        import tritonclient.http as httpclient

        self._client_mod = httpclient
        self._client = httpclient.InferenceServerClient(url=url, connection_timeout=60, network_timeout=300)
        try:
            metadata = self._client.get_model_metadata(spec.name, spec.version)
        except Exception as exc:  # tritonclient raises its own exception types for every failure
            raise ModelError(
                f"Triton at {url}: cannot read model {spec.name} version {spec.version}: {exc}"
            ) from exc
        outputs = {o["name"] for o in metadata["outputs"]}
        if spec.logits_output not in outputs:
            raise ModelError(
                f"{spec.name}: Triton model has no output {spec.logits_output!r} ({sorted(outputs)})"
            )
        features = spec.features_output if spec.features_output in outputs else None
        self.spec = replace(
            spec,
            input_name=metadata["inputs"][0]["name"],
            input_datatype=metadata["inputs"][0].get("datatype") or spec.input_datatype,
            features_output=features,
        )
        config = self._client.get_model_config(spec.name, spec.version)
        # Triton refuses requests above the model's max_batch_size: split our batches to fit
        self._max_batch = int(config.get("max_batch_size", 0)) or None

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        size = self._max_batch or len(batch)
        parts = [self._infer(batch[i : i + size]) for i in range(0, len(batch), size)]
        logits = np.concatenate([p[0] for p in parts])
        if any(p[1] is None for p in parts):
            return logits, None
        return logits, np.concatenate([p[1] for p in parts if p[1] is not None])

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        http = self._client_mod
        x = np.ascontiguousarray(batch, dtype=np.float32)
        inp = http.InferInput(self.spec.input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        names = [self.spec.logits_output] + ([self.spec.features_output] if self.spec.features_output else [])
        outs = [http.InferRequestedOutput(n, binary_data=True) for n in names]
        result = self._client.infer(self.spec.name, [inp], model_version=self.spec.version, outputs=outs)
        logits = result.as_numpy(self.spec.logits_output)
        features = result.as_numpy(self.spec.features_output) if self.spec.features_output else None
        return logits, features


# --------------------------------------------------------------------------------------- opening


def open_model(
    model: Path,
    *,
    version: str | None = None,
    triton_url: str | None = None,
    logits_output: str = "LOGITS",
    features_output: str | None = "FEATURES",
) -> Extractor:
    model = Path(model)
    if model.is_file():
        if model.suffix not in TORCHSCRIPT_SUFFIXES:
            raise ModelError(
                f"{model}: expected a TorchScript file ({', '.join(sorted(TORCHSCRIPT_SUFFIXES))})"
            )
        spec = ModelSpec(model.stem, version or "1", "INPUT", None, logits_output, features_output)
        return TorchScriptExtractor(model, spec)
    config_path = model / "config.pbtxt"
    if not config_path.is_file():
        raise ModelError(
            f"{model}: neither a TorchScript file nor a Triton model directory (no config.pbtxt)"
        )
    config = parse_pbtxt(config_path.read_text())
    versions = sorted((p.name for p in model.iterdir() if p.is_dir() and p.name.isdigit()), key=int)
    if version is None:
        if not versions:
            raise ModelError(f"{model}: no numbered version folders")
        version = versions[-1]
    version_dir = model / version
    if triton_url is None and not version_dir.is_dir():
        raise ModelError(f"{model}: version {version} not found (have {', '.join(versions) or 'none'})")
    inputs = config.get("input", [])
    if not inputs:
        raise ModelError(f"{config_path}: declares no input")
    output_names = [o.get("name") for o in config.get("output", [])]
    if logits_output not in output_names:
        raise ModelError(f"{config_path}: no output named {logits_output!r} (outputs: {output_names})")
    if features_output and is_ensemble(config):
        try:
            features_output = resolve_features_output(config, features_output)
        except EnsembleConfigError as exc:
            raise ModelError(str(exc)) from exc
    if features_output not in output_names:
        features_output = None
    dims = inputs[0].get("dims")
    spec = ModelSpec(
        name=str(config.get("name", model.name)),
        version=str(version),
        input_name=str(inputs[0].get("name", "INPUT")),
        input_shape=tuple(int(d) for d in dims) if dims and all(int(d) > 0 for d in dims) else None,
        logits_output=logits_output,
        features_output=features_output,
        input_datatype=_v2_datatype(inputs[0].get("data_type")),
    )
    if triton_url:
        return TritonClientExtractor(triton_url, spec)
    if is_ensemble(config):
        raise ModelError(
            f"{model}: a Triton ensemble runs its steps only in Triton: start Triton with this repository "
            "(tritonserver --model-repository=...) and pass --triton-url"
        )
    if (version_dir / "model.pt").is_file():
        return TorchScriptExtractor(version_dir / "model.pt", spec)
    if (version_dir / "network.py").is_file():
        return NumpyNetworkExtractor(version_dir, spec)
    raise ModelError(
        f"{version_dir}: cannot run this model here (no model.pt or network.py); start Triton with this "
        "repository and pass --triton-url"
    )


def extract(
    extractor: Extractor, dataset: Dataset, *, batch_size: int = 256, progress: bool = True
) -> Extracted:
    """Run the model over ``dataset`` in batches; checks shapes and values of what comes back."""
    spec = extractor.spec
    x = dataset.inputs
    if spec.input_shape is not None and dataset.sample_shape != spec.input_shape:
        if int(np.prod(dataset.sample_shape)) != int(np.prod(spec.input_shape)):
            raise DataError(
                f"{dataset.name}: samples have shape {dataset.sample_shape}, model takes {spec.input_shape}"
            )
        x = x.reshape((x.shape[0], *spec.input_shape))
    logits_parts: list[np.ndarray] = []
    feature_parts: list[np.ndarray] = []
    has_features: bool | None = None
    starts = range(0, x.shape[0], batch_size)
    for start in tqdm(
        starts, desc=f"{spec.name}: {dataset.name}", unit="batch", disable=not progress, leave=False
    ):
        batch = x[start : start + batch_size]
        try:
            logits, features = extractor.run(batch)
        except (ModelError, DataError):
            raise
        except Exception as exc:  # the user's model failed: say on what
            raise ModelError(
                f"{spec.name}: the model failed on {dataset.name} rows {start}..{start + len(batch) - 1} "
                f"(input shape {batch.shape}): {type(exc).__name__}: {exc}"
            ) from exc
        logits = np.asarray(logits, dtype=np.float64).reshape(len(batch), -1)
        logits_parts.append(logits)
        if has_features is None:
            has_features = features is not None
        if has_features:
            if features is None:
                raise ModelError(f"{spec.name}: features output disappeared at {dataset.name} row {start}")
            feature_parts.append(np.asarray(features, dtype=np.float64).reshape(len(batch), -1))
    all_logits = np.concatenate(logits_parts)
    if not np.all(np.isfinite(all_logits)):
        raise ModelError(f"{spec.name}: the model returned NaN or infinite logits on {dataset.name}")
    all_features = np.concatenate(feature_parts) if feature_parts else None
    if all_features is not None and not np.all(np.isfinite(all_features)):
        raise ModelError(f"{spec.name}: the model returned NaN or infinite features on {dataset.name}")
    return Extracted(dataset.name, all_logits, all_features, dataset.labels, dataset.inputs)


# ------------------------------------------------------------------------ protobuf text format

_TOKEN = re.compile(r'\s*(?:#[^\n]*\n?)*\s*("(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"#]+)')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """A small parser for Triton's config.pbtxt (protobuf text format): messages become dicts,
    repeated fields lists (``input``/``output`` are always lists), scalars str/int/float."""
    tokens = [m.group(1) for m in _TOKEN.finditer(text) if m.group(1)]
    pos = 0

    def scalar(tok: str) -> Any:
        if tok.startswith('"'):
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
        for cast in (int, float):
            try:
                return cast(tok)
            except ValueError:
                pass
        return tok

    def value() -> Any:
        nonlocal pos
        tok = tokens[pos]
        if tok == "{":
            pos += 1
            return message("}")
        if tok == "[":
            pos += 1
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        pos += 1
        return scalar(tok)

    def message(end: str | None) -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            v = value()
            if pos < len(tokens) and tokens[pos] == ",":
                pos += 1
            if key in out:
                prev = out[key]
                out[key] = (
                    [*prev, *(v if isinstance(v, list) else [v])] if isinstance(prev, list) else [prev, v]
                )
            else:
                out[key] = v
        pos += 1
        return out

    try:
        parsed = message(None)
    except IndexError as exc:
        raise ModelError("config.pbtxt: unbalanced braces or brackets") from exc
    for key in ("input", "output"):
        if key in parsed and isinstance(parsed[key], dict):
            parsed[key] = [parsed[key]]
    return parsed
