"""Fitting of guard artifacts (`guardedmodel fit`): features and logits from a model, temperature
scaling, OOD detectors, thresholds, drift references and a readable report. Uses torch; the
sidecar never imports this package."""
