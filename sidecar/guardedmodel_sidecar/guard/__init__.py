"""Guard maths used at request time: artifact I/O, OOD scores, calibrated confidence, drift (numpy only).

Modules: ``artifact`` (GuardArtifact, save_artifact, load_artifact), ``scoring`` (make_ood_scorer,
calibrated_confidence, softmax), ``drift`` (psi, ks_statistic, DriftAccumulator), ``inputs``
(raw-input range and grey-level checks against the artifact's InputReference).
"""
