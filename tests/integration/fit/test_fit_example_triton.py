"""The example model in the real Triton: its outputs match the torch model, and the guard scores
computed from Triton's outputs match the ones the fit computed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from guardedmodel_fit.cli import fit_from_specs
from guardedmodel_fit.example import ExampleBuild
from guardedmodel_fit.example_data import NUM_CLASSES
from guardedmodel_fit.example_network import FEATURE_DIM, INPUT_NAME, MODEL_NAME
from guardedmodel_fit.extract import extract, open_model
from guardedmodel_fit.fit_config import FitConfig
from guardedmodel_sidecar.guard.artifact import FusedParams, load_artifact
from guardedmodel_sidecar.guard.scoring import METHODS, calibrated_confidence, make_ood_scorer
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration


def _repository_with_all_versions(build: ExampleBuild, tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    shutil.copytree(build.repository, repo, ignore=shutil.ignore_patterns("guard"))
    config = repo / MODEL_NAME / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy: { all { } }\n")
    return repo


def _infer(
    client: httpclient.InferenceServerClient, version: str, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    logits, features = [], []
    for start in range(0, len(x), 64):
        batch = np.ascontiguousarray(x[start : start + 64], dtype=np.float32)
        inp = httpclient.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch)
        result = client.infer(MODEL_NAME, [inp], model_version=version)
        logits.append(result.as_numpy("LOGITS"))
        features.append(result.as_numpy("FEATURES"))
    return np.concatenate(logits), np.concatenate(features)


def test_triton_outputs_and_guard_scores_match(
    fashion_example: ExampleBuild, triton_server_factory: Callable[..., TritonServer], tmp_path: Path
) -> None:
    server = triton_server_factory(_repository_with_all_versions(fashion_example, tmp_path))
    client = httpclient.InferenceServerClient(url=server.http_url)
    metadata = client.get_model_metadata(MODEL_NAME, "1")
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [
        ("LOGITS", [-1, NUM_CLASSES]),
        ("FEATURES", [-1, FEATURE_DIM]),
    ]
    validation = fashion_example.dataset("validation")
    near = fashion_example.dataset("held-out-classes")
    x = np.concatenate([validation.inputs[:192], near.inputs[:64]])
    for version in ("1", "2"):
        logits, features = _infer(client, version, x)
        module = torch.jit.load(str(fashion_example.torchscript(version)))
        with torch.no_grad():
            t_logits, t_features = (t.numpy() for t in module(torch.from_numpy(x)))
        assert np.allclose(logits, t_logits, rtol=1e-4, atol=1e-4), version
        assert np.allclose(features, t_features, rtol=1e-4, atol=1e-4), version

        artifact = load_artifact(fashion_example.model_dir / version / "guard")
        assert artifact.model_version == version and artifact.num_classes == NUM_CLASSES
        fitted = extract(
            open_model(fashion_example.model_dir, version=version), validation.subset(np.arange(192))
        )
        for method in METHODS:
            scorer = make_ood_scorer(method, artifact)
            from_triton = scorer.score(logits, features)
            from_fit = scorer.score(fitted.logits, fitted.features)
            assert np.allclose(from_triton[:192], from_fit, rtol=1e-4, atol=1e-4), (version, method)
        conf, pred = calibrated_confidence(logits[:192], artifact.temperature)
        # version 2 is the deliberately weak model (1 epoch on 5% of the data); chance is 1/8
        assert np.mean(pred == validation.labels[:192]) > (0.8 if version == "1" else 0.35)
        assert np.all((conf > 0) & (conf <= 1))
    # the reference model's guard flags held-out classes far more often than it rejects known ones
    artifact = load_artifact(fashion_example.model_dir / "1" / "guard")
    logits, features = _infer(client, "1", x)
    flagged = (
        make_ood_scorer("mahalanobis", artifact).score(logits, features) > artifact.thresholds["mahalanobis"]
    )
    assert flagged[192:].mean() > 2 * flagged[:192].mean() + 0.2


def test_fit_through_a_running_triton(
    fashion_example: ExampleBuild, triton_server_factory: Callable[..., TritonServer], tmp_path: Path
) -> None:
    server = triton_server_factory(_repository_with_all_versions(fashion_example, tmp_path))
    validation = fashion_example.dataset("validation")
    keep = np.arange(0, len(validation), 4)
    np.savez(tmp_path / "val.npz", inputs=validation.inputs[keep], labels=validation.labels[keep])
    outcome = fit_from_specs(
        model=fashion_example.model_dir,
        version="1",
        triton_url=server.http_url,
        data=str(tmp_path / "val.npz"),
        ood=[f"inverted={fashion_example.data_dir / 'inverted.npz'}"],
        out=tmp_path / "guard",
        config=FitConfig(progress=False, methods=("mahalanobis", "energy", "msp")),
    )
    report = outcome.result.report
    assert report["detectors"]["mahalanobis"]["ood"]["inverted"]["auroc"] > 0.95
    assert load_artifact(tmp_path / "guard").feature_dim == FEATURE_DIM


def test_example_guard_states_its_error_rates(fashion_example: ExampleBuild) -> None:
    """The worked example's guard: calibration scores per detector, the fused detector, the auto
    choice made on the example's own OOD sets, and measured in-distribution rejection rates that
    agree with the stated ones."""
    artifact = load_artifact(fashion_example.model_dir / "1" / "guard")
    report = json.loads((fashion_example.model_dir / "1" / "guard" / "report" / "report.json").read_text())
    fused = artifact.detectors["fused"]
    assert isinstance(fused, FusedParams) and fused.members == ("mahalanobis", "energy")
    calibration_n = report["samples"]["calibration"]
    for method, scores in artifact.calibration_scores.items():
        assert scores.size == (calibration_n // 2 if method == "fused" else calibration_n), method
    assert artifact.auto_method == report["auto"]["method"]
    assert report["auto"]["chosen_by"].startswith("the fit's own OOD sets (held-out-classes, digits")
    assert set(report["detectors"]["fused"]["ood"]) == set(report["detectors"]["mahalanobis"]["ood"])
    for method, entry in report["detectors"].items():
        for alpha in ("0.01", "0.05", "0.1"):
            figures = entry["conformal"][alpha]
            lo, hi = figures["band_90"]
            ci_lo, ci_hi = figures["measured_ci_95"]
            assert ci_lo <= hi and lo <= ci_hi, (method, alpha, figures)
