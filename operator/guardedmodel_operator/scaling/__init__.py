"""Scaling a GuardedModel's Triton Deployment between spec.replicas.min and max on Triton queue time."""
