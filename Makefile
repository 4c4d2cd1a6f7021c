# Quick start: `make demo` (runs the node end to end on embedded defaults), `make test`.
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: demo test lint setup setup-peers bench clean

setup:
	@deploy/bootstrap.sh

setup-peers:
	@deploy/bootstrap.sh --peers

demo: setup
	$(VENV)/bin/cxr-node demo --out demo-out

# PASSIVE: the tests run a node, Orthanc and torch side by side on few cores; spinning OpenMP
# threads would starve the others (measured: training 0.4 instead of 13 images/s).
test: setup-peers lint
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/python -m pytest -q -rs $(PYTEST_ARGS)

# The lint gate (pyproject's [tool.ruff] and [tool.mypy]): `make test`, and so CI, runs it first.
lint: setup
	$(VENV)/bin/ruff check cxr_node training && $(VENV)/bin/ruff format --check cxr_node training && $(VENV)/bin/mypy cxr_node training

bench: setup
	$(VENV)/bin/cxr-node bench inference

clean:
	rm -rf demo-out .pytest_cache .mypy_cache .ruff_cache
