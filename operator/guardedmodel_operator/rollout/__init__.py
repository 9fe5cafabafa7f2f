"""Progressive delivery of model versions: canary steps, rollback, and a continuous guard.

observe (status + metric samples from Prometheus) → `verdict.decide` (pure) →
`outcome.apply_verdict` (pure) → one status write when something changed, plus an
Event. A rollout step or a rollback is a routing flip in the status: the sidecar
follows `stableVersion / canaryVersion / canaryWeight`, both versions stay loaded.
"""
