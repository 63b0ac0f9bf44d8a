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

# The suite in three processes side by side (a 2-vCPU machine): numba's first compile of the
# kernels takes minutes on a clean machine and runs on one core, so the binary kernels' tests
# and the other kernel tests each get a process beside all the remaining tests; every group
# must pass. `pytest` alone runs the same tests in one process.
KERNELS := tests/runtime/kernels
GROUP_BINARY := $(KERNELS)/test_binary.py $(KERNELS)/test_fast_model.py tests/bench
GROUP_KERNELS := $(filter-out $(GROUP_BINARY),$(wildcard $(KERNELS)/test_*.py))
test: $(STAMP) lint
	@a=$$(mktemp); b=$$(mktemp); \
	$(BIN)/python -m pytest $(GROUP_BINARY) > $$a 2>&1 & pa=$$!; \
	$(BIN)/python -m pytest $(GROUP_KERNELS) > $$b 2>&1 & pb=$$!; \
	$(BIN)/python -m pytest --ignore=$(KERNELS) --ignore=tests/bench; rest=$$?; \
	wait $$pa; ra=$$?; wait $$pb; rb=$$?; \
	echo "--- $(GROUP_BINARY) (run beside the above):"; cat $$a; \
	echo "--- $(GROUP_KERNELS) (run beside the above):"; cat $$b; rm -f $$a $$b; \
	test $$rest -eq 0 && test $$ra -eq 0 && test $$rb -eq 0

clean:
	rm -rf $(VENV) runs
