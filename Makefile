# `make demo` and `make test` each set up .venv on a fresh machine, then run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first and pinned, so no dependency can pull a (multi-GB) CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# --overwrite: a second `make demo` replaces the previous runs/demo (and says so); `unipo demo`
# alone refuses a non-empty demo directory.
demo: $(STAMP)
	$(VENV)/bin/unipo demo --overwrite

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples

TRL_VENV ?= benchmarks/.venv-trl

$(TRL_VENV)/.installed: benchmarks/setup_trl_env.sh $(STAMP)
	VENV=$(TRL_VENV) UNIPO_PY=$(PY) bash benchmarks/setup_trl_env.sh
	touch $@

# CPU benchmarks (results in benchmarks/results/*.json), then one summary table: unipo vs TRL's
# GRPOTrainer, log-prob/entropy memory (4,096 tokens; LOGPROB_ARGS= for 4,096 and 8,192 tokens
# and four chunk sizes, ~1 h), step-time scaling (SCALING_ARGS="--rounds 2" and more: --help).
LOGPROB_ARGS ?= --quick
SCALING_ARGS ?=
bench: $(STAMP) $(TRL_VENV)/.installed
	$(PY) benchmarks/vs_trl.py --trl-python $(TRL_VENV)/bin/python
	$(PY) benchmarks/logprob_memory.py $(LOGPROB_ARGS)
	$(PY) benchmarks/scaling.py $(SCALING_ARGS)
	$(PY) benchmarks/length_grouping.py
	$(PY) benchmarks/summary.py

clean:
	rm -rf $(VENV) $(TRL_VENV) runs .pytest_cache
