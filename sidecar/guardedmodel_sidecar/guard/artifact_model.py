"""The guard artifact's contents: detector parameters, drift and input references, and the
GuardArtifact that holds them for one model version (see ``artifact`` for the on-disk format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

# Version 2 added per-detector calibration scores (conformal p-values), the fused detector and the
# fit's ``auto`` choice. This sidecar still reads version 1 (no calibration scores: it then falls
# back to the stored raw thresholds); a version-1 reader refuses version 2 with a clear message.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)
ARRAYS_FILE = "guard.npz"
MANIFEST_FILE = "guard.json"
MANIFEST_KIND = "guardedmodel.io/guard-artifact"


class ArtifactError(Exception):
    """A guard artifact cannot be written or read; the message names the file and the problem."""


@dataclass(frozen=True, eq=False)
class MahalanobisParams:
    """Class-conditional Gaussians with one shared covariance (Lee et al., 2018).

    With ``normalise`` the features are L2-normalised before the distance (means and precision
    were fitted on normalised features too); this usually separates far-OOD inputs better.
    """

    class_means: np.ndarray  # (C, D) float64
    precision: np.ndarray  # (D, D) float64, inverse of the shared (tied) covariance
    normalise: bool = False


@dataclass(frozen=True, eq=False)
class KnnParams:
    """k-th nearest neighbour distance among L2-normalised in-distribution features (Sun et al., 2022)."""

    bank: np.ndarray  # (N, D) float32, each row has unit L2 norm
    k: int


@dataclass(frozen=True, eq=False)
class EnergyParams:
    """Free energy of the logits, -T * logsumexp(logits / T) (Liu et al., 2020)."""

    temperature: float = 1.0


@dataclass(frozen=True, eq=False)
class MspParams:
    """The baseline: 1 - maximum softmax probability (Hendrycks & Gimpel, 2017)."""

    temperature: float = 1.0


@dataclass(frozen=True, eq=False)
class VimParams:
    """Virtual-logit matching (Wang et al., 2022): feature residual off the principal subspace.

    score = alpha * ||(features - origin) @ residual_basis|| - logsumexp(logits)
    """

    origin: np.ndarray  # (D,) float64, -pinv(W) @ b of the affine logit head
    residual_basis: np.ndarray  # (D, D - r) float64, orthonormal complement of the principal subspace
    alpha: float


# How the fused detector combines its members' conformal p-values p_1..p_M into one statistic
# (higher = more OOD): Fisher's -2 sum ln p_i, or -ln min p_i (the minimum, Bonferroni-style). Neither
# is referred to its textbook null distribution (the members are dependent): the statistic gets its
# own conformal calibration instead, which is valid under any dependence.
COMBINATIONS = ("fisher", "min")


@dataclass(frozen=True, eq=False)
class FusedParams:
    """Conformal fusion of other fitted detectors (``members``, names in ``detectors``).

    Each member's score becomes a conformal p-value against its row of ``member_calibration``
    (in-distribution scores on one part, A, of the calibration split; interpolated between
    neighbouring scores); the p-values are combined by ``combination``. The combined statistic's own calibration scores (on the other part, B)
    are the fused detector's entry in ``GuardArtifact.calibration_scores``.
    """

    members: tuple[str, ...]
    combination: str
    member_calibration: np.ndarray  # (M, nA) float64, each row sorted ascending


DetectorParams: TypeAlias = MahalanobisParams | KnnParams | EnergyParams | MspParams | VimParams | FusedParams

DETECTOR_TYPES: dict[str, type] = {
    "mahalanobis": MahalanobisParams,
    "knn": KnnParams,
    "energy": EnergyParams,
    "msp": MspParams,
    "vim": VimParams,
    "fused": FusedParams,
}

# Detectors fitted directly on the data (the fused one is built from them).
SINGLE_METHODS: tuple[str, ...] = ("mahalanobis", "energy", "knn", "msp", "vim")

# Methods whose scores need the model's penultimate features (the others use the logits only).
FEATURE_METHODS = frozenset({"mahalanobis", "knn", "vim"})


@dataclass(frozen=True, eq=False)
class DriftReference:
    """What in-distribution traffic looked like at fit time, binned for PSI/KS drift statistics.

    Bin edges are quantiles of the validation data, so each reference bin holds about the same
    share; when binning live data the outermost edges are treated as open (-inf, +inf).
    ``feature_edges`` has zero rows when the model exposes no feature output.
    """

    feature_edges: np.ndarray  # (D, B+1) float64, non-decreasing along axis 1
    feature_fractions: np.ndarray  # (D, B) float64, rows sum to 1
    confidence_edges: np.ndarray  # (Bc+1,) float64, calibrated max-probability bins
    confidence_fractions: np.ndarray  # (Bc,) float64
    class_fractions: np.ndarray  # (C,) float64, share of each predicted class
    # Rows the fractions were counted on (0 in artifacts written before this was recorded): the
    # drift test compares two samples, so the reference's own sampling noise counts.
    samples: int = 0


@dataclass(frozen=True)
class InputReference:
    """Raw-input statistics of the validation set, so the gate can flag range and grey-level shift.

    ``sample_mean_range`` and ``sample_std_range`` bound the per-sample mean and standard
    deviation seen in validation (a low and a high quantile, widened by a margin).
    """

    name: str
    shape: tuple[int, ...]  # per-sample shape, without the batch dimension
    minimum: float
    maximum: float
    mean: float
    std: float
    sample_mean_range: tuple[float, float]
    sample_std_range: tuple[float, float]


@dataclass(frozen=True, eq=False)
class GuardArtifact:
    format_version: int
    model_name: str
    model_version: str
    num_classes: int
    feature_dim: int  # 0 when the model has no feature output (only logit methods then)
    temperature: float  # calibrated softmax temperature
    detectors: dict[str, DetectorParams]
    thresholds: dict[str, float]  # per method; higher score = more OOD; accept when score <= threshold
    target_acceptance: float
    reference: DriftReference
    input_reference: InputReference | None = None
    logits_output: str = "LOGITS"
    features_output: str | None = "FEATURES"
    metadata: dict[str, Any] = field(default_factory=dict)  # JSON-able; "report" holds the fit summary
    created_at: str | None = None  # set by save_artifact / read by load_artifact (ISO 8601, UTC)
    # Per method: its in-distribution scores on calibration data it was not fitted on, sorted
    # ascending, float64 (what conformal p-values and alpha thresholds are computed from). Empty
    # in version-1 artifacts.
    calibration_scores: dict[str, np.ndarray] = field(default_factory=dict)
    # The detector the fit chose for ``method: auto`` (None in version-1 artifacts).
    auto_method: str | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.detectors)
