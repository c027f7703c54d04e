# Every target sets up what it needs: a venv in .venv with the pinned dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml setup.py otlp_meter/_native.c otlp_meter/_blake2b.h
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/otlp-meter run $(if $(CONFIG),--config $(CONFIG),)

lint: $(STAMP)
	$(BIN)/ruff check otlp_meter tests benchmarks
	$(BIN)/ruff format --check otlp_meter tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# The whole suite with the C extension (otlp_meter/_native.c), then what it speeds up again in
# pure Python (OTLP_METER_NATIVE=0): the rules, the queue and the pipeline behave the same either way.
unit: $(STAMP)
	$(BIN)/pytest -q
	OTLP_METER_NATIVE=0 $(BIN)/pytest -q tests/unit/rules tests/unit/queue tests/unit/test_pipeline.py \
		tests/unit/test_pipeline_cumulative.py --ignore=tests/unit/rules/test_native.py \
		--ignore=tests/unit/queue/test_codec_native.py

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
