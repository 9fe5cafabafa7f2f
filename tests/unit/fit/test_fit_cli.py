"""`guardedmodel fit` end to end on a small TorchScript model (real torch, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fit_synthetic import gaussian_classes

from guardedmodel_cli.main import main
from guardedmodel_fit.dataset_file import DatasetRow, InputSpec, dataset_table
from guardedmodel_sidecar.guard.artifact import FusedParams, load_artifact
from guardedmodel_sidecar.guard.scoring import make_ood_scorer


class TwoHeads(torch.nn.Module):
    """Features = a fixed random ReLU layer of the input; logits = a linear readout of them."""

    def __init__(self, with_features: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.hidden = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, 3)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.randn(16, 8, generator=g))
            self.hidden.bias.zero_()
        self.with_features = with_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.hidden(x))
        return self.head(features), features


class LogitsOnly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fitcli")
    rng = np.random.default_rng(5)
    x, y, _ = gaussian_classes(rng, 1500)
    model = TwoHeads()
    # train the readout briefly so the logits mean something
    opt = torch.optim.Adam(model.head.parameters(), lr=0.05)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(model(xt)[0], yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.jit.script(model).save(str(root / "model.pt"))
    torch.jit.script(LogitsOnly()).save(str(root / "logits_only.pt"))
    np.savez(root / "val.npz", inputs=x.astype(np.float32), labels=y)
    np.savez(root / "far.npz", inputs=(rng.normal(size=(400, 8)) * 4 + 6).astype(np.float32))
    return root


def test_fit_command_writes_artifact_and_report(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "guard"
    argv = ["fit", "--model", str(workdir / "model.pt"), "--data", str(workdir / "val.npz")]
    argv += ["--ood", f"far={workdir / 'far.npz'}", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "guard for model v1 written to" in printed and "AUROC/FPR@95: far" in printed
    artifact = load_artifact(out)
    assert artifact.num_classes == 3 and artifact.feature_dim == 16
    assert set(artifact.thresholds) == {"mahalanobis", "energy", "knn", "msp", "vim", "fused"}
    assert set(artifact.calibration_scores) == set(artifact.thresholds)
    assert artifact.auto_method in artifact.detectors
    assert "in-distribution rejected at alpha 0.01: " in printed and "; alpha 0.05: " in printed
    assert f"method auto -> {artifact.auto_method}: best mean AUROC over the fit's OOD sets" in printed
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["detectors"]["mahalanobis"]["ood"]["far"]["auroc"] > 0.95
    assert (out / "report" / "report.png").stat().st_size > 10000
    # the artifact scores the model's own outputs exactly as the fit did
    module = torch.jit.load(str(workdir / "model.pt"))
    far = np.load(workdir / "far.npz")["inputs"]
    with torch.no_grad():
        logits, features = (t.numpy() for t in module(torch.from_numpy(far)))
    score = make_ood_scorer("mahalanobis", artifact).score(logits, features)
    assert np.mean(score > artifact.thresholds["mahalanobis"]) == pytest.approx(
        report["detectors"]["mahalanobis"]["ood"]["far"]["flagged_at_threshold"], abs=1e-9
    )


def test_errors_are_reported_not_raised(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["fit", "--no-progress", "--out", str(workdir / "x")]
    code = main([*base, "--model", str(workdir / "logits_only.pt"), "--data", str(workdir / "val.npz")])
    assert code == 2
    assert "has no feature output, but mahalanobis, knn, vim need(s)" in capsys.readouterr().err
    logits_only = ["--model", str(workdir / "logits_only.pt"), "--data", str(workdir / "val.npz")]
    code = main([*base, *logits_only, "--methods", "energy,msp"])
    assert code == 0
    capsys.readouterr()
    code = main([*base, "--model", str(workdir / "model.pt"), "--data", str(workdir / "far.npz")])
    assert code == 2 and "needs labels" in capsys.readouterr().err
    code = main(
        [*base, "--model", str(workdir / "model.pt"), "--data", str(workdir / "val.npz"), "--ood", "broken"]
    )
    assert code == 2 and "expected NAME=SPEC" in capsys.readouterr().err
    code = main([*base, "--model", str(workdir / "val.npz"), "--data", str(workdir / "val.npz")])
    assert code == 2 and "expected a TorchScript file" in capsys.readouterr().err


def test_fusion_options_on_the_command_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["fit", "--model", str(workdir / "model.pt"), "--data", str(workdir / "val.npz"), "--no-progress"]
    out = workdir / "fused-knn-vim"
    argv = [*base, "--out", str(out), "--fusion-members", "knn,vim", "--fusion-combination", "min"]
    assert main([*argv, "--scorer-budget-us", "1000"]) == 0
    printed = capsys.readouterr().out
    assert "fused = min of knn, vim p-values" in printed
    # without OOD sets, auto is the fused detector (within the budget given)
    assert "method auto -> fused" in printed and "no OOD sets were given" in printed
    fused = load_artifact(out).detectors["fused"]
    assert isinstance(fused, FusedParams) and fused.members == ("knn", "vim") and fused.combination == "min"
    assert main([*base, "--out", str(workdir / "unfused"), "--fusion-members", ""]) == 0
    assert "fused" not in load_artifact(workdir / "unfused").detectors


def test_the_worked_example_is_cached_beside_the_other_caches(tmp_path: Path) -> None:
    """GUARDEDMODEL_CACHE, then XDG_CACHE_HOME, then ~/.cache: the test ground's rule, so an empty
    cache directory really starts from scratch."""
    from guardedmodel_fit.example import default_out

    assert default_out({"GUARDEDMODEL_CACHE": str(tmp_path)}) == tmp_path / "examples"
    assert default_out({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "guardedmodel" / "examples"
    assert default_out({}) == Path.home() / ".cache" / "guardedmodel" / "examples"


def test_reviewed_data_set_files_are_fitted_on_and_evaluated_with(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    val = np.load(workdir / "val.npz")
    far = np.load(workdir / "far.npz")["inputs"][:200]
    spec = InputSpec("INPUT", "FP32", (8,))

    def rows(x: np.ndarray, labels: list[int | None]) -> list[DatasetRow]:
        return [
            DatasetRow(f"r{i}", 0, y, y is None, x[i].astype("<f4").tobytes()) for i, y in enumerate(labels)
        ]

    first = workdir / "reviewed-1.parquet"
    second = workdir / "reviewed-2.parquet"
    pq.write_table(dataset_table(spec, rows(val["inputs"][:700], val["labels"][:700].tolist())), first)
    tail = np.concatenate([val["inputs"][700:], far])
    pq.write_table(
        dataset_table(spec, rows(tail, [*val["labels"][700:].tolist(), *[None] * len(far)])), second
    )
    out = workdir / "guard-reviewed"
    argv = ["fit", "--model", str(workdir / "model.pt"), "--data", str(first), "--data", str(second)]
    argv += [
        "--ood",
        f"reviewed={second}",
        "--out",
        str(out),
        "--no-progress",
        "--methods",
        "mahalanobis,energy",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["detectors"]["mahalanobis"]["ood"]["reviewed"]["auroc"] > 0.95
    samples = report["samples"]
    assert samples["fit"] + samples["calibration"] + samples["evaluation"] == len(val["inputs"])  # both sets
    assert samples["ood:reviewed"] == len(far)  # the ood rows only
