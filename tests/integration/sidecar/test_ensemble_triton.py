"""A Triton ensemble behind the sidecar: the worked example as a chain (an unflatten step, then the
classifier), its guard fitted through Triton with the classifier step's features, served by the real
CPU Triton in explicit model control.

The sidecar loads the ensemble (Triton loads its steps with it), answers in-distribution rows,
refuses out-of-distribution rows by the score on the step's features (the same score the guard's
maths gives on the ensemble's own outputs) and refuses malformed inputs at the gate, before Triton.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import SidecarProcess, launch_sidecar
from test_sidecar_per_row_triton import within_gate_statistics
from tritonclient.utils import InferenceServerException

from guardedmodel_fit.example import DEFAULT_OUT, ExampleBuild, build_example
from guardedmodel_fit.example_data import FAR_OOD_SETS
from guardedmodel_fit.example_ensemble import (
    ENSEMBLE_FEATURES,
    ENSEMBLE_INPUT,
    ENSEMBLE_NAME,
    STEP_NAME,
    fit_ensemble_guard,
    write_ensemble_repository,
)
from guardedmodel_fit.example_network import MODEL_NAME
from guardedmodel_sidecar.guard.artifact import load_artifact
from guardedmodel_sidecar.guard.scoring import calibrated_confidence, make_ood_scorer
from guardedmodel_testground.sidecar_config import sidecar_config
from guardedmodel_testground.triton import TritonServer

pytestmark = pytest.mark.integration

METHOD = "mahalanobis"
REVIEW_BELOW = 0.6


@dataclass(frozen=True)
class Chain:
    repository: Path
    triton: TritonServer
    sidecar: SidecarProcess
    threshold: float
    accepted: np.ndarray  # in distribution, confident, well below the threshold
    ood: np.ndarray  # far above the threshold, within the gate's per-sample statistics


def infer(url: str, model: str, x: np.ndarray, name: str = ENSEMBLE_INPUT, datatype: str = "FP32") -> Any:
    inp = httpclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return httpclient.InferenceServerClient(url).infer(model, [inp])


def direct(triton: TritonServer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    parts = [infer(triton.http_url, ENSEMBLE_NAME, x[i : i + 64]) for i in range(0, len(x), 64)]
    return (
        np.concatenate([p.as_numpy("LOGITS") for p in parts]),
        np.concatenate([p.as_numpy(ENSEMBLE_FEATURES) for p in parts]),
    )


@pytest.fixture(scope="module")
def example() -> ExampleBuild:
    return build_example(DEFAULT_OUT, versions=("1",), progress=False)


@pytest.fixture(scope="module")
def chain(example: ExampleBuild, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    work = tmp_path_factory.mktemp("ensemble")
    layout = write_ensemble_repository(example.model_dir, work / "models")
    triton = TritonServer(layout.repository, model_control_mode="explicit", log_dir=work / "logs")
    triton.start()
    try:
        client = httpclient.InferenceServerClient(triton.http_url)
        client.load_model(ENSEMBLE_NAME)
        # the fit names the classifier step's own output; it is read as the ensemble's EMBEDDING
        fit_ensemble_guard(example, layout, triton.http_url)
        # the sidecar's own loader brings the chain back, steps included
        client.unload_model(ENSEMBLE_NAME, unload_dependents=True)
        assert not client.is_model_ready(MODEL_NAME)

        artifact = load_artifact(layout.ensemble_dir / "1" / "guard")
        assert artifact.features_output == ENSEMBLE_FEATURES
        client.load_model(ENSEMBLE_NAME)  # scored directly once, then unloaded again
        scorer = make_ood_scorer(METHOD, artifact)
        validation = example.dataset("validation").inputs[2000:3000].reshape(-1, 784).astype(np.float32)
        far = example.dataset(FAR_OOD_SETS[0]).inputs[500:1000].reshape(-1, 784).astype(np.float32)
        logits, features = direct(triton, validation)
        scores = scorer.score(logits, features)
        confidence, _ = calibrated_confidence(logits, artifact.temperature)
        threshold = float(np.quantile(scores, 0.9))
        keep = (scores < np.quantile(scores, 0.5)) & (confidence > REVIEW_BELOW + 0.15)
        accepted = validation[keep & within_gate_statistics(validation, artifact)]
        far_scores = scorer.score(*direct(triton, far))
        ood = far[(far_scores > 2 * threshold) & within_gate_statistics(far, artifact)]
        assert len(accepted) >= 32 and len(ood) >= 4, (len(accepted), len(ood))
        client.unload_model(ENSEMBLE_NAME, unload_dependents=True)

        spec = {
            "model": {"name": ENSEMBLE_NAME, "version": "1", "platform": "ensemble"},
            "gate": {
                "inputs": [
                    {"name": ENSEMBLE_INPUT, "datatype": "FP32", "shape": [784], "min": 0.0, "max": 1.0}
                ],
                "ood": {"method": METHOD, "threshold": threshold, "action": "reject"},
            },
            "confidence": {"reviewBelow": REVIEW_BELOW, "review": {"webhook": None, "maxFraction": 1.0}},
            "audit": {"enabled": True, "sampleRate": 0.0},
            "drift": {"window": "60s"},
        }
        config = sidecar_config(spec, triton=triton, repository=layout.repository, workdir=work / "sidecar")
        sidecar = launch_sidecar(config, work, "sidecar")
        try:
            sidecar.wait_ready(timeout=90)
            yield Chain(layout.repository, triton, sidecar, threshold, accepted, ood)
        finally:
            sidecar.stop()
    finally:
        triton.stop()


def test_the_sidecar_loads_the_chain_with_its_steps(chain: Chain) -> None:
    client = httpclient.InferenceServerClient(chain.triton.http_url)
    for model in (ENSEMBLE_NAME, STEP_NAME, MODEL_NAME):
        assert client.is_model_ready(model), model


def test_rows_are_decided_by_the_score_on_the_step_features(chain: Chain) -> None:
    x = chain.accepted[:16].copy()
    ood_rows = [2, 9, 13]
    for i, row in enumerate(ood_rows):
        x[row] = chain.ood[i % len(chain.ood)]
    result = infer(chain.sidecar.http_url, ENSEMBLE_NAME, x)
    decisions = [d.decode() if isinstance(d, bytes) else d for d in result.as_numpy("GUARD_DECISION")]
    assert decisions == ["reject" if i in ood_rows else "accept" for i in range(16)]
    _, features = direct(chain.triton, x)
    artifact = load_artifact(chain.repository / ENSEMBLE_NAME / "1" / "guard")
    expected = make_ood_scorer(METHOD, artifact).score(result.as_numpy("LOGITS")[[0]], features[[0]])
    assert np.allclose(result.as_numpy("GUARD_OOD_SCORE")[0], expected, rtol=1e-4)
    embedding = result.as_numpy(ENSEMBLE_FEATURES)
    answered = [i for i in range(16) if i not in ood_rows]
    assert np.array_equal(embedding[answered], features[answered])  # Triton's answer, unchanged
    assert np.isnan(embedding[ood_rows]).all()


def test_the_gate_refuses_malformed_inputs_before_the_chain(chain: Chain) -> None:
    good = chain.accepted[:2]
    malformed = [
        (good.reshape(2, 1, 28, 28), ENSEMBLE_INPUT, "FP32", "shape"),
        (good.astype(np.float64), ENSEMBLE_INPUT, "FP64", "FP64"),
        (np.where(np.arange(784) == 5, np.nan, good).astype(np.float32), ENSEMBLE_INPUT, "FP32", "NaN"),
        (good, "INPUT", "FP32", "INPUT"),  # the classifier step's input, not the chain's
    ]
    for x, name, datatype, said in malformed:
        with pytest.raises(InferenceServerException) as refused:
            infer(chain.sidecar.http_url, ENSEMBLE_NAME, x, name=name, datatype=datatype)
        assert refused.value.status() == "400", (said, refused.value)
        assert said.lower() in refused.value.message().lower(), (said, refused.value.message())
