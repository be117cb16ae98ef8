# Two commands do everything: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
# Setup installs without compiling (only imported modules need bytecode), so Python must be free to
# write each module's bytecode on first import: where the environment forbids it
# (PYTHONDONTWRITEBYTECODE), every process (each Dask worker, each flow run) compiles torch, prefect
# and the rest again: imports take 16 s instead of 7 s here.
unexport PYTHONDONTWRITEBYTECODE
OUT ?= demo-output

.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup.sh

# With ../shared beside the repo (as in CI) the light stage photographs the real face scan there.
SCAN := ../shared/data/face_scan
demo: setup
	$(PY) -m singinghead.cli demo --out $(OUT) $(if $(wildcard $(SCAN)/james.obj),--scan $(SCAN)/james.obj --scan-landmarks $(SCAN)/james.ljson)

lint: setup
	.venv/bin/ruff check singinghead tests bench
	.venv/bin/lint-imports

test: lint
	$(PY) -m pytest -q

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .venv $(OUT) .pytest_cache .ruff_cache
