# Single source of truth for humans and CI. `make help` lists the targets.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium
PROMETHEUS ?= /usr/bin/prometheus
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help setup run report test test-fast lint typecheck bench bench-stream bench-fanout bench-swap bench-capacity retrain kafka-up kafka-down bundle-models bundle-data clean kafka-jars browser dashboard-shot prometheus test-deploy

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install tickcast with its dev tools

run: $(STAMP) kafka-jars  ## the main job: local broker, replay of bundled data, serve, dashboard
	$(BIN)/tickcast run

report: $(STAMP)  ## evaluate every bundled model on its bundled data (tables, plots in ./out)
	$(BIN)/tickcast report

browser:  ## Debian's Chromium for the dashboard test (apt-get when missing)
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }

prometheus:  ## Debian's Prometheus and promtool for the deploy tests (apt-get when missing)
	@test -x $(PROMETHEUS) || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends prometheus; }

test-deploy: $(STAMP) kafka-jars prometheus  ## compose/Dockerfile/Grafana checks; a real Prometheus on a live serve
	$(BIN)/pytest tests/deploy

dashboard-shot: $(STAMP) kafka-jars browser  ## browser test, saving bench/results/dashboard.png
	TICKCAST_SAVE_SCREENSHOT=1 $(BIN)/pytest tests/streamer/e2e/test_dashboard.py

kafka-jars: $(STAMP)  ## fetch the pinned Kafka broker's jars with Maven (once; see deploy/kafka)
	$(BIN)/python -c 'from streamer.kafka.jars import ensure_jars; ensure_jars(quiet=False)'

test: $(STAMP) kafka-jars browser prometheus  ## lint, type-check and the whole test suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

FAST := not kafka and not browser and not prometheus and not slow and not heavy
test-fast: $(STAMP)  ## everything without a broker, browser, Prometheus or training (~150 CPU-seconds)
	$(BIN)/pytest -m '$(FAST)'

lint: $(STAMP)  ## ruff lint + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)  ## mypy (strict) on model/ and streamer/
	$(BIN)/mypy

bench: $(STAMP)  ## per-tick cost table (installs the bench extra: keras, torch)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python bench/step_bench.py

bench-stream: $(STAMP) kafka-jars  ## the stream through a real Kafka broker: ticks/s and latency
	$(BIN)/python bench/stream_bench.py

bench-fanout: $(STAMP)  ## websocket fan-out: deliveries/s and latency to 100 and 1,000 clients
	$(BIN)/python bench/fanout_bench.py

bench-swap: $(STAMP)  ## model hot swap: each round's time and the pause, 100 to 10,000 symbols
	$(BIN)/python bench/swap_bench.py

bench-capacity: $(STAMP) kafka-jars  ## one instance's sustained ticks/s at p99 < 50 ms (tickcast loadtest)
	$(BIN)/python bench/capacity.py

kafka-up: $(STAMP) kafka-jars  ## a local Kafka broker on 127.0.0.1:9092 (detached)
	$(BIN)/tickcast kafka up

kafka-down: $(STAMP)  ## stop the broker kafka-up started
	$(BIN)/tickcast kafka down

retrain: $(STAMP)  ## one champion/challenger retraining run on the ticks topic (registry in ./registry)
	$(BIN)/tickcast retrain

bundle-models: $(STAMP)  ## retrain the bundled models (minutes each)
	$(BIN)/tickcast bundle

bundle-data:  ## regenerate model/datasets from the source packages (installs the data extra)
	$(BIN)/pip install -q -e '.[data]'
	$(BIN)/python scripts/bundle_data.py

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache out
