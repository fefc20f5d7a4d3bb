# The two commands of the README's Quick start. Each sets up what it needs first.
.PHONY: demo test lint setup

demo:  ## the main job: the classification ladder on Fashion-MNIST (small scale, ~10 min on 2 CPU cores)
	@scripts/setup.sh
	.venv/bin/torchdojo run ladder

test:  ## the test suite (what CI runs)
	@scripts/setup.sh --test
	.venv/bin/python -m pytest -q -p no:cacheprovider
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks

lint:
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
