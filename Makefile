# fairfleet — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FF := $(VENV)/bin/fairfleet
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install system-deps jars lint test broker broker-stop broker-status schemas demo bench clean

# Virtual environment at .venv with the package (editable) and its dev extras.
install: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# Debian packages the tests use: Java + Maven for the broker, prometheus/promtool for rules.
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The Kafka broker's jars, resolved once by Maven into ~/.cache/fairfleet.
jars: install
	$(PY) -c "from fairfleet.broker import resolve_jars; print('kafka jars in', resolve_jars())"

lint: install
	$(VENV)/bin/ruff check services tests bench deploy/grafana
	$(VENV)/bin/ruff format --check services tests bench deploy/grafana
	$(VENV)/bin/mypy

schemas: install
	$(FF) schemas write

# Full suite against a real broker started (and stopped) around pytest. Two pytest workers
# (pytest-xdist), each taking whole test files: most of the suite waits on the broker and on
# round deadlines rather than on a CPU, so two files at a time take 10–12 minutes instead of
# 19 on 2 cores. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: install system-deps jars
	scripts/with-broker.sh $(VENV)/bin/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

broker: install jars
	$(FF) broker start

broker-stop:
	$(FF) broker stop

broker-status:
	$(FF) broker status

demo: install system-deps jars
	$(FF) demo --report demo-report

# Flower is a benchmark-only comparison; its pins clash with ours, so it goes in without deps.
bench: install jars
	$(PY) -m pip install --quiet --no-deps -r bench/requirements-flower.txt
	scripts/with-broker.sh $(PY) -m bench.run

clean:
	rm -rf .fairfleet .pytest_cache .mypy_cache .ruff_cache demo-report
