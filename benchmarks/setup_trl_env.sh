#!/usr/bin/env bash
# Build the benchmark's own venv with TRL (from PyPI) for benchmarks/vs_trl.py.
#
#   bash benchmarks/setup_trl_env.sh            # -> benchmarks/.venv-trl
#   VENV=/tmp/trl TRL_VERSION=1.16.0 bash benchmarks/setup_trl_env.sh
#
# torch is installed first and pinned (a constraint on every later install), so no TRL
# dependency can swap it for another build. transformers/accelerate are pinned to the
# versions in unipo's venv (.venv) when it exists, so both sides run the same HF code.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-benchmarks/.venv-trl}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TRL_VERSION=${TRL_VERSION:-1.16.0}
PY=${PYTHON:-python3}
UNIPO_PY=${UNIPO_PY:-.venv/bin/python}

same_as_unipo() {  # "name==version" from unipo's venv, or just "name"
  local v
  v=$("$UNIPO_PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true)
  if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}

"$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" "torch==$TORCH_VERSION"
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH_VERSION" >"$constraints"
"${pip[@]}" -c "$constraints" "trl==$TRL_VERSION" "$(same_as_unipo transformers)" \
  "$(same_as_unipo accelerate)" psutil
"$VENV/bin/python" - "$TORCH_VERSION" <<'PY'
import sys
import torch, transformers, trl, accelerate, datasets
want = sys.argv[1]
have = torch.__version__.split("+")[0]
if have != want:
    sys.exit(f"torch is {torch.__version__}, expected {want}: an install replaced it")
print(f"ok: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
      f"accelerate {accelerate.__version__}, datasets {datasets.__version__}")
PY
