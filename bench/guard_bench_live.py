"""In-distribution rejection rate vs alpha, measured through running sidecars with real traffic.

One Triton serves the worked example; one sidecar per alpha (``spec.gate.ood.alpha``) sits in front
of it, each with the same detector. The evaluation rows (in-distribution rows the guard was neither
fitted nor calibrated on) go through each sidecar in batches of 32 with an unchanged tritonclient
call, and every row's decision is read from the response's ``GUARD_DECISION`` output. The measured
rate gets a 95 % Clopper-Pearson interval; the conformal guarantee says its expectation over
calibration sets is floor(alpha (n + 1)) / (n + 1), and for this one calibration set the rate lies
in the Beta(l, n + 1 - l) band. The number of rejected rows among m fresh rows then follows a
Beta-Binomial(m, l, n + 1 - l) distribution (both the calibration set and the m rows are random);
its central 95 % is the interval the measured count must fall in.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from guardedmodel_fit.conformal_report import calibration_band, clopper_pearson
from guardedmodel_sidecar.guard.conformal import guaranteed_rejection_rate

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32


def measure_rejection(
    repository: Path,
    model: str,
    version: str,
    rows: np.ndarray,
    alphas: Sequence[float],
    method: str,
    n_calibration: int,
) -> list[dict[str, Any]]:
    """One entry per alpha: rows sent, rows rejected, the rate with its interval and the band."""
    from guardedmodel_testground.triton import TritonServer

    work = Path(tempfile.mkdtemp(prefix="guard-bench-live-"))
    out = []
    with contextlib.ExitStack() as stack:
        triton = stack.enter_context(TritonServer(repository, model_control_mode="explicit", log_dir=work))
        for alpha in alphas:
            # one sidecar at a time: the others would only take CPU from the one measured
            with _sidecar(work, triton, repository, model, version, rows, method, alpha) as http:
                started = time.perf_counter()
                decisions = _decisions(http, model, version, rows)
            rejected = int(np.sum(decisions == "reject"))
            n = int(decisions.size)
            low, high = clopper_pearson(rejected, n)
            expected = guaranteed_rejection_rate(alpha, n_calibration)
            band = calibration_band(alpha, n_calibration)
            predicted = predictive_interval(alpha, n_calibration, n)
            out.append(
                {
                    "alpha": alpha,
                    "method": method,
                    "rows": n,
                    "rejected": rejected,
                    "review": int(np.sum(decisions == "review")),
                    "rate": rejected / n,
                    "rate_ci95": [low, high],
                    "expected": expected,
                    "band90_this_calibration": list(band),
                    "predictive_95": list(predicted),
                    "within_predictive": predicted[0] <= rejected / n <= predicted[1],
                    "seconds": time.perf_counter() - started,
                }
            )
    return out


def predictive_interval(
    alpha: float, n_calibration: int, rows: int, level: float = 0.95
) -> tuple[float, float]:
    """Central ``level`` interval of the share of ``rows`` fresh in-distribution rows rejected at
    ``alpha``: Beta-Binomial(rows, l, n + 1 - l), l = floor(alpha (n + 1))."""
    n = n_calibration
    rank = round(guaranteed_rejection_rate(alpha, n) * (n + 1))
    if rank == 0:
        return 0.0, 0.0
    dist = stats.betabinom(rows, rank, n + 1 - rank)
    tail = (1.0 - level) / 2.0
    return float(dist.ppf(tail)) / rows, float(dist.ppf(1.0 - tail)) / rows


@contextlib.contextmanager
def _sidecar(
    work: Path,
    triton: Any,
    repository: Path,
    model: str,
    version: str,
    rows: np.ndarray,
    method: str,
    alpha: float,
) -> Any:
    from guardedmodel_testground.procs import ManagedProcess, http_ok, wait_until
    from guardedmodel_testground.sidecar_config import sidecar_command, sidecar_config

    spec = {
        "model": {"name": model, "version": version},
        "gate": {
            "inputs": [
                {"name": "INPUT", "datatype": "FP32", "shape": list(rows.shape[1:]), "min": 0.0, "max": 1.0}
            ],
            "ood": {"method": method, "alpha": alpha, "action": "reject"},
            "batchPolicy": "perRow",
        },
        # Only the OOD decision is measured: no confidence review, no audit sampling.
        "confidence": {"reviewBelow": 0.0},
        "audit": {"enabled": False},
    }
    name = f"{method}-alpha-{alpha:g}"
    config = sidecar_config(
        spec, triton=triton, repository=repository, workdir=work / name, routing={"stableVersion": version}
    )
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    sidecar = ManagedProcess(
        name, sidecar_command(config_path, "--log-level", "WARNING"), work / f"{name}.log", cwd=ROOT
    ).start()
    http = f"127.0.0.1:{config['listen']['http']}"
    try:
        ready = f"http://{http}/v2/models/{model}/versions/{version}/ready"
        wait_until(f"the {name} sidecar", lambda: http_ok(ready), 120, process=sidecar)
        yield http
    finally:
        sidecar.stop()


def _decisions(http: str, model: str, version: str, rows: np.ndarray) -> np.ndarray:
    """Every row's decision, read from GUARD_DECISION (a request whose rows are all rejected is
    refused whole, so its rows count as rejected)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(http)
    decisions: list[str] = []
    for start in range(0, rows.shape[0], BATCH):
        x = np.ascontiguousarray(rows[start : start + BATCH], dtype=np.float32)
        tensor = httpclient.InferInput("INPUT", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        try:
            result = client.infer(model, [tensor], model_version=version)
        except InferenceServerException as exc:
            if "out of distribution" not in str(exc):
                raise
            decisions.extend(["reject"] * x.shape[0])
            continue
        decisions.extend(
            v.decode() if isinstance(v, bytes) else str(v) for v in result.as_numpy("GUARD_DECISION")
        )
    client.close()
    return np.asarray(decisions)
