"""Real local parts for tests, demo and benchmarks: a Kubernetes control plane, Triton and Prometheus on loopback."""
