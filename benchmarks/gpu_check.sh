#!/usr/bin/env bash
# The CUDA path on a real GPU, in one go: builds lrfast against the machine's
# own Python (its torch, numba-cuda, pytest), runs the CUDA tests without the
# simulator, profiles the host cost of lrfast.torch on CUDA tensors, then
# `lrfast bench --device cuda` and the pytest-benchmark suite. Every log and
# JSON file goes to $OUT (default ./gpu-check). Each phase has a time limit,
# so one that hangs still leaves the others' results.
#
#   bash benchmarks/gpu_check.sh [phase ...]    # phases: env install tests profile bench suite offload
#
# BENCH_ARGS (extra `lrfast bench` options) and SUITE_K (a pytest -k filter)
# narrow the benchmarks when device time is short.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0 CMAKE_BUILD_PARALLEL_LEVEL=16
py=${PYTHON:-python3}
phases=${*:-env install tests profile bench suite offload}

phase() {  # phase NAME SECONDS COMMAND...: runs it, logs to $out/NAME.log
  local name=$1 limit=$2
  shift 2
  [[ " $phases " == *" $name "* ]] || return 0
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - start)) s"
  tail -n 25 "$out/$name.log"
}

phase env 60 bash -c "nvidia-smi; $py -c 'import sys, numpy, numba, torch; from importlib.metadata import version as v
print(sys.version); print(\"numpy\", numpy.__version__, \"numba\", numba.__version__, \"numba-cuda\", v(\"numba-cuda\"), \"torch\", torch.__version__, torch.version.cuda)'"
# The image has scikit-build-core, pybind11, cmake and ninja; nothing is fetched.
phase install 300 $py -m pip install --no-build-isolation --no-deps --no-index .
# From the repository root, `pytest` imports the installed package, not ./lrfast.
# (each kernel variant compiles on first use, about a second each: most of the time here)
phase tests 420 $py -P -m pytest tests/test_cuda.py tests/test_cuda_lr_free.py -q --timeout 120 \
  --benchmark-disable
phase profile 120 $py benchmarks/gpu_host_cost.py
phase bench 240 lrfast bench --device cuda --json "$out/bench.json" ${BENCH_ARGS:-}
phase suite 300 $py -P -m pytest -p no:cacheprovider benchmarks/bench_cuda.py -q \
  -c benchmarks/pytest.ini --benchmark-max-time=0.05 --benchmark-min-rounds=5 \
  --benchmark-json="$out/bench_cuda.json" --benchmark-columns=min,median,rounds -k "${SUITE_K:-}"
# CPUOffload: results against the plain optimizer, then the ~1 B-parameter benchmark
phase offload 420 $py benchmarks/offload_gpu_check.py "$out"
