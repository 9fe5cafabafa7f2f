"""`kubectl guardedmodel`: read and steer a GuardedModel's rollout (status, history, promote, abort, undo)."""
