# The two commands a newcomer needs are `make demo` and `make test`; both
# install whatever is missing first, so they work on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):/usr/local/go/bin:$(PATH)
# Re-install the Python side whenever pyproject.toml changes.
PY_STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
PACKAGES := -p guardedmodel_operator -p guardedmodel_sidecar -p guardedmodel_fit -p guardedmodel_cli -p guardedmodel_testground
# CI runs the representative set, real pods included; `make test-all` adds the slowest scenarios.
PYTEST_ARGS ?= -m "not slow"
# The real-pod tier (tests/pods) runs a kubelet: its packages are installed as root only, and
# as another user its tests are skipped with that reason.
POD_TIER_DEPS := $(if $(filter 0,$(shell id -u)),pod-deps node-deps)

.PHONY: setup system-deps python-deps cluster-binaries lint test test-all test-pods test-reliability pod-deps node-deps demo demo-real-pods demo-evergreen bench-sidecar bench-guard bench-operator bench-operator-day bench-soak bench-rollback bench-cost bench-ensemble fuzz crds-sync dashboard-sync dashboard-png clean

setup: system-deps python-deps cluster-binaries

system-deps:
	scripts/install-system-deps.sh

python-deps: $(PY_STAMP)

$(PY_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

cluster-binaries: python-deps
	$(BIN)/guardedmodel cluster build

lint: python-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPYPATH=operator:sidecar:cli:testground $(BIN)/mypy $(PACKAGES)
	$(BIN)/lint-imports
	$(BIN)/python -m guardedmodel_operator.crdsync --check
	$(BIN)/python -m guardedmodel_cli.dashboard --check

test: setup lint $(POD_TIER_DEPS)
	$(BIN)/pytest $(PYTEST_ARGS)

test-all:
	$(MAKE) test PYTEST_ARGS=''

# The fault and load scenarios of docs/reliability.md, in the reduced form CI runs (slow ones included).
test-reliability: setup
	$(BIN)/pytest -m reliability

# Real pods only: the image built from the Dockerfile, a real kubelet, the chart installed, and
# the demo's story on them (root only).
test-pods: setup pod-deps node-deps
	$(BIN)/pytest -m pods

# buildah and mmdebstrap: the images are built from the Dockerfile with no registry or Docker engine.
pod-deps:
	scripts/install-pod-deps.sh

# containerd, runc, CNI plugins, iptables/nftables, busybox-static: the real node beside the kwok nodes.
node-deps:
	scripts/install-node-deps.sh

demo: setup
	$(BIN)/guardedmodel demo

# The same story with the operator and the model in real pods (root; images built on first use).
demo-real-pods: setup pod-deps node-deps
	$(BIN)/guardedmodel demo --real-pods

# One turn of the data loop: the model in a bucket (MinIO), reviews, a new guard fitted, published and
# rolled out.
demo-evergreen: setup
	$(BIN)/guardedmodel demo --evergreen

# Benchmarks measure side by side and write bench/results/*.json + *.png; run them on a quiet machine.
bench-sidecar: setup
	$(BIN)/python bench/sidecar_vs_triton.py --micro-batching --baselines --profile

bench-guard: setup
	$(BIN)/python bench/guard_quality.py

# The example as a Triton ensemble vs. the classifier alone, direct and through the sidecar.
# Writes bench/results/ensemble_latency.json.
bench-ensemble: setup
	$(BIN)/python bench/ensemble_latency.py

# Cost per prediction of the worked example (CPU-seconds, reviews per 1,000 in the demo mix).
# Writes bench/results/cost.json.
bench-cost: setup
	$(BIN)/python bench/cost_per_prediction.py

bench-operator: setup
	$(BIN)/python bench/operator_scale.py --count 1000

# 1,000 GuardedModels with every operator timer firing every 10 s for 10 minutes of steady state: writes
# per minute (from the API server's audit log; must be 0) and memory. Writes bench/results/operator_day.json|png.
bench-operator-day: setup
	$(BIN)/python bench/operator_day.py --count 1000 --minutes 10 --interval 10

# The sidecar under 30 minutes of a sustained good/OOD/malformed mix over HTTP and gRPC: RSS, open fds,
# asyncio tasks and p99 per interval with their slopes per hour. Writes bench/results/soak.json|png.
bench-soak: setup
	$(BIN)/python bench/soak_sidecar.py --minutes 30

# Drift onset to traffic on the last good version (canary and promoted, interval 5s and 30s), next to
# a Flagger-style analysis of the same knobs; about 15 minutes. Writes bench/results/rollback.json|png.
bench-rollback: setup
	$(BIN)/python bench/rollback_time.py --runs 5s=6,30s=4

# Fuzz the live sidecar (real Triton behind it) over HTTP and gRPC: >= 100k cases, several minutes.
# Writes bench/results/fuzz.json; failing cases go to bench/results/fuzz-failures.jsonl for --replay.
fuzz: setup
	$(BIN)/python bench/fuzz_sidecar.py --cases 100000

# The chart carries a copy of the CRD; crds/ is the one source.
crds-sync: python-deps
	$(BIN)/python -m guardedmodel_operator.crdsync

# The chart's Grafana dashboard (charts/guardedmodel/files/dashboard.json) is generated; the
# builder in cli/guardedmodel_cli/dashboard.py is the one source.
dashboard-sync: python-deps
	$(BIN)/python -m guardedmodel_cli.dashboard

# The dashboard's panels, drawn from its own queries against a real Prometheus over 45 s of
# mixed traffic to the sidecar before a real Triton: docs/images/dashboard.png.
dashboard-png: setup
	GUARDEDMODEL_DASHBOARD_PNG=$(CURDIR)/docs/images/dashboard.png GUARDEDMODEL_DASHBOARD_SECONDS=45 \
		$(BIN)/pytest tests/integration/sidecar/test_dashboard_queries.py -q

clean:
	rm -rf .state .pytest_cache .mypy_cache .ruff_cache
