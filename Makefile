# Quick start: `make demo` (runs the node end to end on embedded defaults), `make test`.
# Edit loop: `make check` (lint + the fast tier: no Debian peers, no training, no DenseNet loads).
VENV ?= .venv
PYTEST_ARGS ?=
# The full suite in parallel (pytest-xdist): most of its time is waiting on peers, nodes and
# sockets, so three workers on two cores finish sooner; a file's tests stay on one worker.
PYTEST_WORKERS ?= 3

.PHONY: demo test check lint ruff lock setup setup-peers bench clean

setup:
	@deploy/bootstrap.sh

setup-peers:
	@deploy/bootstrap.sh --peers

demo: setup
	$(VENV)/bin/cxr-node demo --out demo-out

# PASSIVE: the tests run a node, Orthanc and torch side by side on few cores; spinning OpenMP
# threads would starve the others (measured: training 0.4 instead of 13 images/s).
# One OpenMP thread per process (workers and the nodes, trainings and CLIs they start): the
# workers already fill the cores, and two threads each only contend (measured on 2 cores, three
# training test files side by side: 292 s with the default two threads, 152 s with one). With one
# thread the node's Analyzer runs its two models in turn; test_engine checks the side-by-side mode.
TEST_THREADS ?= 1
# ruff first (seconds); mypy (about a minute from a cold cache, one core) runs beside the tests, which
# leave ~8 % of two cores idle waiting on peers and sockets; its report follows theirs, and either
# failing fails the target. The package is compiled to bytecode once, up front: where
# PYTHONDONTWRITEBYTECODE is set (CI images) every node and CLI process the tests start would
# compile cxr_node again (~0.2 CPU-s each, ~300 of them).
test: setup-peers ruff
	@$(VENV)/bin/python -m compileall -q -j 0 cxr_node training >/dev/null
	@$(VENV)/bin/mypy cxr_node training >$(VENV)/mypy.log 2>&1 & mypy_pid=$$!; \
	OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$(TEST_THREADS) $(VENV)/bin/python -m pytest -q -rs -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS); \
	tests=$$?; wait $$mypy_pid; mypy=$$?; echo "mypy:"; cat $(VENV)/mypy.log; \
	[ $$tests -eq 0 ] && [ $$mypy -eq 0 ]

# The fast tier: every test not marked slow or peers. CXR_NODE_TEST_TIER=fast makes a test that
# reaches for a Debian peer fail (it lacks its marker) instead of quietly slowing the tier.
# Two workers, one OpenMP thread each: 736 tests in 91 s on 2 cores (2026-12-05) instead of ~240 s in one
# process (the tier is mostly single-threaded Python; figures in CONTRIBUTING.md).
CHECK_WORKERS ?= 2
check: lint
	CXR_NODE_TEST_TIER=fast OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=$(TEST_THREADS) $(VENV)/bin/python -m pytest -q -m "not slow and not peers" -n $(CHECK_WORKERS) --durations=10 $(PYTEST_ARGS)

# The lint gate (pyproject's [tool.ruff] and [tool.mypy]). `make check` runs it first; `make test`, and so CI,
# runs ruff first and mypy beside the tests.
lint: ruff
	$(VENV)/bin/mypy cxr_node training

ruff: setup
	$(VENV)/bin/ruff check cxr_node training tests && $(VENV)/bin/ruff format --check cxr_node training tests

bench: setup
	$(VENV)/bin/cxr-node bench inference

# Re-resolve the pins: a throwaway venv gets the newest versions pyproject's ranges allow, and
# their exact versions become deploy/constraints.txt. Then `make test`, and commit both.
lock:
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/pip install -q torch==2.14.1 torchvision==0.29.1 && .venv-lock/bin/pip install -q -e ".[test,postgres,train]"
	( echo "# Exact versions cxr-node's tests passed with; \`make lock\` regenerates this file from pyproject's ranges."; \
	  echo "# deploy/bootstrap.sh, docs/install.md and CI install through it (pip install -c deploy/constraints.txt)."; \
	  .venv-lock/bin/pip freeze --exclude-editable ) > deploy/constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf demo-out .pytest_cache .mypy_cache .ruff_cache
