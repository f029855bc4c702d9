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

## make bench: every figure of docs/performance.md, by the command the page names (JSON + Markdown in
## benchmarks/results; many hours on a 2-core CPU). The side-by-side rows need the official checkouts in $(OFFICIAL)
## (docs/side_by_side.md) and are skipped without them.
OFFICIAL ?= /tmp/official
BENCH := $(PY) benchmarks
bench: $(VENV)/.stamp-run
	$(BENCH)/bench_inference.py --sizes 480p,240p --frames 4 --warmup 1 --threads 2 --out benchmarks/results/inference.json
	$(BENCH)/bench_inference.py --models batman_light,batman --sizes 240p,480p --frames 2 --warmup 1 --threads 1 --out benchmarks/results/inference_batman.json
	$(BENCH)/bench_roofline.py --size 480p --threads 1 --force
	$(BENCH)/bench_train_throughput.py --threads 1 --steps 3 --warmup 1 --runs loader,preloaded,data,macs
	$(BENCH)/bench_train_throughput.py --threads 1 --paper-crop --steps 1 --warmup 1 --runs preloaded,data,macs
	$(BENCH)/bench_train_throughput.py --threads 1 --models stm_r18 --steps 3 --warmup 1 --runs persistent --override data.train_source=folder
	$(BENCH)/bench_train_throughput.py --threads 1 --models stm_r18 --steps 3 --warmup 1 --runs preloaded --variant channels_last
	$(BENCH)/bench_train_throughput.py --threads 1 --models stm_r18 --steps 3 --warmup 1 --runs preloaded --variant compile
	$(BENCH)/bench_denormals.py --parts presets --models stm,aot_t,sitvos,batman_light --sizes 480p --frames 3 --warmup 1 --threads 1 --fresh
	$(BENCH)/bench_denormals.py --parts read --threads 1 --repeats 5
	$(BENCH)/bench_denormals.py --parts read --threads 1 --repeats 3 --read-video noise
	$(BENCH)/bench_long_video.py --models aot_t,stm_r18 --frames 300 --size 240x432 --at 100 --threads 1 --out benchmarks/results/long_video.json
	$(BENCH)/bench_long_video.py --models aot_t --frames 1000 --size 480x854 --at 100 --threads 2 --out benchmarks/results/long_video_full.json
	$(BENCH)/bench_long_video.py --models stm,aot_s,aot_b,aot_l,r50_aot_l,sitvos,sitvos_r18,munet,munet_r18,mga,mga_r18,batman,batman_light --frames 300 --size 120x216 --at 100 --threads 2 --out benchmarks/results/long_video_all.json
	$(BENCH)/bench_local_attention.py
	$(BENCH)/bench_aot_fps.py
	if [ -d $(OFFICIAL)/aot-benchmark ]; then $(BENCH)/side_by_side_aot.py $(OFFICIAL)/aot-benchmark --threads 2; else echo "make bench: no $(OFFICIAL)/aot-benchmark, side_by_side_aot skipped"; fi
	if [ -d $(OFFICIAL)/STM ]; then $(BENCH)/side_by_side_stm.py $(OFFICIAL)/STM --threads 2; else echo "make bench: no $(OFFICIAL)/STM, side_by_side_stm skipped"; fi

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
