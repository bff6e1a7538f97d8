# Tide: `make demo` runs the main job, `make test` runs every test. Both install what they need first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: bench-sim bench-stop bench-vs-keda bench-wait bench-scale-down images fuzz e2e e2e-kind demo chart-sync helm-lint install lint test test-fast bench bench-worker bench-latency bench-operator cluster-up cluster-down demo e2e e2e-kind clean

install:
	@hack/install.sh

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy worker-image/tide_worker operator/tide_operator hack/tide_local
	$(VENV)/bin/lint-imports

# Everything, slow chaos/soak/e2e runs included: what CI runs. hack/docker.sh starts a Docker engine
# where it can (root on Debian); elsewhere the container tests skip and say why. Then `make e2e-kind`
# where privileged containers can run (after pytest: its runtime switch comes after the container
# tests), or one line saying why not (hack/images/kind/ci.sh; TIDE_SKIP_KIND=1 skips it).
test: install lint
	@hack/docker.sh --optional
	$(PYTEST) -p no:cacheprovider tests
	@hack/images/kind/ci.sh

# The operator and worker images (tide-operator:dev, tide-worker:dev), rebuilt only when their inputs
# changed; the base is made locally when it cannot be pulled (docs/images.md).
images:
	@hack/images/build.sh

# The inner loop: skips runs marked slow.
test-fast: install
	$(PYTEST) -p no:cacheprovider -m "not slow" -x -q tests

# The generated-input tests only, with a much larger budget and a fresh seed (TIDE_FUZZ_EXAMPLES to change it).
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(PYTEST) -p no:cacheprovider -m fuzz tests

bench: bench-worker bench-latency bench-operator

bench-worker: install
	@TIDE_EXTRAS=operator,dev,bench hack/install.sh
	@hack/extra-venv.sh .cache/bench-async bench-async
	$(PY) bench/worker_bench.py

# Seconds from SIGTERM to exit of an idle worker, every system of bench-worker.
bench-stop: install
	@TIDE_EXTRAS=operator,dev,bench hack/install.sh
	@hack/extra-venv.sh .cache/bench-async bench-async
	$(PY) bench/stop_bench.py

# Enqueue-to-handler-start p50/p99 at 100 msgs/s into one worker, every system of bench-worker.
bench-latency: install
	@TIDE_EXTRAS=operator,dev,bench hack/install.sh
	@hack/extra-venv.sh .cache/bench-async bench-async
	$(PY) bench/latency_bench.py

# Burst-to-patch latency (50 bursts) and 1,000 QueueConsumers with bursts on 100, on the local stack.
bench-operator: install
	@hack/extra-venv.sh .cache/operator-venv operator
	$(PY) bench/operator/bench.py
	$(PY) bench/operator/wake.py

# Tide against KEDA v2.21.0 (built from the Go module proxy, hack/keda) on a local stack of its own: the
# flash, long, waves and stream traces against tide, keda-tuned and keda-defaults (~1.5 h);
# bench/results/vs-keda.json and vs-keda-<trace>.png.
bench-vs-keda: install
	PYTHONPATH=. $(PY) bench/vs_keda.py

# The simulator (bench/sim): Tide's policy.decide and a model of KEDA + the HPA, validated against the
# bench-vs-keda runs, then a week-long bursty trace and 10,000 queues; bench/results/sim.json and sim-*.png.
bench-sim: install
	PYTHONPATH=. $(PY) bench/sim/run.py

# The wait-time objective under a step load (issue 12): 200 msgs/s of 50 ms jobs, x10 for 2 minutes,
# targetWaitSeconds 2, with the pod start time measured in the same run; about 4 minutes on the local
# stack. bench/results/wait-objective.json and wait-objective.png.
bench-wait: install
	PYTHONPATH=. $(PY) bench/wait_objective.py

# Jobs interrupted by scale-downs while idle pods existed, pod deletion costs on against off in the same
# run (issue 12): 10 minutes of 5-60 s jobs, arrivals rising and falling, seeded. bench/results/scale-down.json.
bench-scale-down: install
	PYTHONPATH=. $(PY) bench/scale_down_soak.py

cluster-up: install
	$(PY) -m tide_local.cluster up

cluster-down: install
	$(PY) -m tide_local.cluster down

clean: cluster-down
	rm -rf .cache/cluster

# The chart ships copies of the CRDs (Helm installs them and keeps them on uninstall) and of the
# admission policy (a template renders it); tests/chart fails when the copies drift.
chart-sync:
	cp crds/queueconsumer.yaml crds/kopf-peering.yaml charts/tide/crds/
	cp crds/admission-policy.yaml charts/tide/files/

helm-lint: install
	$(PY) -m tide_local.helmbin lint --strict charts/tide

# One end-to-end scenario, two backends: the local stack (here and in CI) and kind (where Docker exists).
e2e: install
	$(PYTEST) -p no:cacheprovider -s tests/e2e

# hack/images/kind/prepare.sh: privileged containers, `make images`, and kind plus a node image built
# here when kind is not installed (docs/images.md).
e2e-kind: install
	@env_lines="$$(hack/images/kind/prepare.sh)" && eval "$$env_lines" && \
	$(PY) -c "from tests.e2e.backends import KindBackend as K; m = K.missing(); m and (print('make e2e-kind needs: ' + ', '.join(m) + ' (install Docker and kind, then retry)'), exit(2))" && \
	TIDE_E2E_BACKEND=kind $(PYTEST) -p no:cacheprovider -s tests/e2e

# The main job: a burst absorbed on the local stack, scaled up and back to zero.
demo: install
	PYTHONPATH=. $(PY) hack/demo.py
