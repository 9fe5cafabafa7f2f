"""The guard sidecar: a KServe v2 data plane in front of Triton with input gate and confidence scorer."""
