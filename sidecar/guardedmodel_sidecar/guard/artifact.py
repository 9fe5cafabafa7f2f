"""The guard artifact: everything the sidecar needs to gate and score one model version.

An artifact lives next to the model version it was fitted for (``<repo>/<model>/<version>/guard/``)
so that rolling a model back also rolls its guard back. On disk it is two files:

- ``guard.npz``  every array (class means, precision, feature bank, reference bins), no pickles;
- ``guard.json`` a manifest a person can read: format version, model, temperature, thresholds,
  detector scalars, the sha256 of ``guard.npz``, creation time and the fit report summary.

Since format version 2 an artifact also holds, per detector, its sorted in-distribution scores on
calibration data (conformal p-values and alpha thresholds come from them), the ``fused``
detector and the fit's choice for ``method: auto``. Version-1 artifacts still load.

The manifest is written last (atomically), so a directory with a manifest is a complete artifact.

Score convention everywhere: HIGHER score = MORE out-of-distribution. ``thresholds[method]`` is
chosen so that ``target_acceptance`` of the in-distribution validation inputs score <= threshold;
an input whose score is above the threshold is out-of-distribution for that method.

This module is the artifact's public face; the parts live in ``artifact_model`` (what an artifact
holds), ``artifact_files`` (writing and reading it) and ``artifact_checks`` (its consistency).
"""

from __future__ import annotations

from .artifact_checks import validate_artifact
from .artifact_files import load_artifact, save_artifact
from .artifact_model import (
    ARRAYS_FILE,
    COMBINATIONS,
    DETECTOR_TYPES,
    FEATURE_METHODS,
    FORMAT_VERSION,
    MANIFEST_FILE,
    MANIFEST_KIND,
    SINGLE_METHODS,
    SUPPORTED_FORMAT_VERSIONS,
    ArtifactError,
    DetectorParams,
    DriftReference,
    EnergyParams,
    FusedParams,
    GuardArtifact,
    InputReference,
    KnnParams,
    MahalanobisParams,
    MspParams,
    VimParams,
)

__all__ = [
    "ARRAYS_FILE",
    "COMBINATIONS",
    "DETECTOR_TYPES",
    "FEATURE_METHODS",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MANIFEST_KIND",
    "SINGLE_METHODS",
    "SUPPORTED_FORMAT_VERSIONS",
    "ArtifactError",
    "DetectorParams",
    "DriftReference",
    "EnergyParams",
    "FusedParams",
    "GuardArtifact",
    "InputReference",
    "KnnParams",
    "MahalanobisParams",
    "MspParams",
    "VimParams",
    "load_artifact",
    "save_artifact",
    "validate_artifact",
]
