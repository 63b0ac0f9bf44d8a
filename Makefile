# make demo: set up .venv if missing, then run the main job. make test: set up, lint, run the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/lowbit demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# The suite in two processes, side by side (a 2-vCPU machine): the numba kernel tests, whose
# first compile of the kernels takes minutes on a clean machine, beside all the others; both
# must pass. `pytest` alone runs the same tests in one process.
KERNEL_TESTS := tests/runtime/kernels tests/bench
test: $(STAMP) lint
	@log=$$(mktemp); \
	$(BIN)/python -m pytest $(KERNEL_TESTS) > $$log 2>&1 & pid=$$!; \
	$(BIN)/python -m pytest $(addprefix --ignore=,$(KERNEL_TESTS)); rest=$$?; \
	wait $$pid; kern=$$?; echo "--- $(KERNEL_TESTS) (run beside the above):"; cat $$log; \
	rm -f $$log; test $$rest -eq 0 && test $$kern -eq 0

clean:
	rm -rf $(VENV) runs
