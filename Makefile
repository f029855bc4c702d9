# The two commands of the README, plus helpers. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIP_FLAGS ?= --quiet --disable-pip-version-check
INSTALL_INPUTS := pyproject.toml constraints.txt
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
# pytest workers and thread counts for the 2-core CI machine
PYTEST_ARGS ?=

.PHONY: demo leaderboard bench test lint format install clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) $(PIP_FLAGS) install --upgrade pip

# Stamps make the install idempotent: re-run only when the dependency declarations change.
$(VENV)/.stamp-run: $(PY) $(INSTALL_INPUTS)
	$(PIP) $(PIP_FLAGS) install -c constraints.txt -e .
	@touch $@

# tests/test_viz.py renders the HTML reports in Debian's chromium (headless); installed here when apt-get can (root)
$(VENV)/.stamp-test: $(VENV)/.stamp-run $(INSTALL_INPUTS)
	$(PIP) $(PIP_FLAGS) install -c constraints.txt -e ".[test]"
	command -v chromium >/dev/null || (command -v apt-get >/dev/null && { $(APT_CHROMIUM) || { apt-get update -qq && $(APT_CHROMIUM); }; }) || true
	@touch $@

install: $(VENV)/.stamp-run

## make demo: generate ToyVOS, run the main job on it and print its result table.
demo: $(VENV)/.stamp-run
	$(VENV)/bin/voszoo-bench

## make leaderboard: every method trained with its quick experiment on ToyVOS, profiled at 480p (hours on a CPU).
leaderboard: $(VENV)/.stamp-run
	$(VENV)/bin/voszoo-bench --config-name leaderboard

## make bench: the performance benchmarks of docs/performance.md (JSON + Markdown in benchmarks/results; hours on a CPU).
bench: $(VENV)/.stamp-run
	$(PY) benchmarks/bench_inference.py --out benchmarks/results/inference.json
	$(PY) benchmarks/bench_long_video.py --out benchmarks/results/long_video.json
	$(PY) benchmarks/bench_train_throughput.py
	$(PY) benchmarks/bench_local_attention.py
	$(PY) benchmarks/bench_aot_fps.py

## make test: install voszoo[test] and run the whole test suite.
test: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check voszoo tests benchmarks
	$(VENV)/bin/ruff format --check voszoo tests benchmarks
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check voszoo tests benchmarks

format: $(VENV)/.stamp-test
	$(VENV)/bin/ruff format voszoo tests benchmarks
	$(VENV)/bin/ruff check --fix voszoo tests benchmarks

clean-venv:
	rm -rf $(VENV)
