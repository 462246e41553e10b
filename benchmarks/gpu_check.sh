#!/usr/bin/env bash
# The CUDA path on a real GPU, in one go (9 minutes at most: BUDGET): builds lrfast
# against the machine's own Python (its torch, numba-cuda, pytest), runs every
# CUDA test file without the simulator, then measures the figures of issue 22
# (benchmarks/gpu_figures.py: kernels, adapter, lowp, lr_free, adafactor, cpu), the
# offload check where benchmarks/offload_gpu_check.py exists, and the numba
# arrays' `lrfast bench --device cuda`. Each phase has a time limit, so one
# that hangs still leaves the others' results. At most 8 files go to $OUT
# (default ./gpu-check), the device tool's limit: gpu_check.log (every phase's
# output), tests.log, figures.json and summary.md (gpu_figures.py), bench.json,
# offload.json.
#
#   bash benchmarks/gpu_check.sh [--dry] [phase ...]
#   phases: env install tests kernels adapter lowp lr_free adafactor cpu offload bench summary
#   (the default), and on request profile (gpu_host_cost.py) and suite (bench_cuda.py)
#
# --dry tests the plumbing here, without a GPU: no install (the checkout's
# lrfast), the simulator, a few tests, tiny sizes and short limits.
# Wheels in .whl/ (lion-pytorch, schedulefree, prodigyopt, torchao: the image
# has none of them) are installed into /tmp/site first, without an index.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [[ ${1:-} == --dry ]]; then dry=1; shift; fi
out=${OUT:-$PWD/gpu-check}
mkdir -p "$out"
log=$out/gpu_check.log
: >"$log"
py=${PYTHON:-python3}
phases=${*:-env install tests kernels adapter lowp lr_free adafactor cpu offload bench summary}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16 NUMBA_ENABLE_CUDASIM=$dry
figures=(benchmarks/gpu_figures.py --json "$out/figures.json")
tests=(tests/test_cuda.py tests/test_cuda_lowp.py tests/test_cuda_lr_free.py
       tests/test_lowbit_nonfinite.py tests/test_cuda_adafactor.py)
if ((dry)); then
  figures+=(--dry --threads 2)
  tests=(-k "vector_and_scalar and adam" tests/test_cuda.py)
  phases=${phases/install/}
fi

# The whole run's limit (BUDGET seconds, default 540): a phase gets what is
# left of it at most, and none starts with under 10 s left.
budget=${BUDGET:-540}
limited() {  # limited SECONDS: SECONDS, or less where the run's budget ends sooner
  local left=$((budget - SECONDS)) limit=$1
  ((dry)) && ((limit > 60)) && limit=60
  echo $((left < limit ? left : limit))
}

phase() {  # phase NAME SECONDS COMMAND...: runs it under a time limit, output to the log
  local name=$1 limit
  limit=$(limited "$2")
  shift 2
  [[ " $phases " == *" $name "* ]] || return 0
  if ((limit < 10)); then echo "== $name: skipped, the run's $budget s are spent" | tee -a "$log"; return 0; fi
  local start=$SECONDS
  echo "== $name" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - start)) s (limit $limit s)" | tee -a "$log"
}

if [[ -d .whl ]] && ((!dry)); then
  $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

phase env 20 bash -c "nvidia-smi || true; $py -c 'import sys, numpy, numba, torch; from importlib.metadata import version as v
print(sys.version); print(\"numpy\", numpy.__version__, \"numba\", numba.__version__, \"numba-cuda\", v(\"numba-cuda\"), \"torch\", torch.__version__, torch.version.cuda)
for name in (\"torchao\", \"lion_pytorch\", \"schedulefree\", \"prodigyopt\"):
    try: __import__(name); print(name, \"imports\")
    except ImportError: print(name, \"missing\")'"
# The image has scikit-build-core, pybind11, cmake and ninja; nothing is fetched.
phase install 150 $py -m pip install --no-build-isolation --no-deps --no-index .
# From the repository root, `pytest -P` imports the installed package, not ./lrfast.
# (each kernel variant compiles on first use, about a second each: most of the time here)
if [[ " $phases " == *" tests "* ]]; then
  start=$SECONDS
  timeout "$(limited 180)" $py -P -m pytest "${tests[@]}" -q -n $((dry ? 0 : 8)) --timeout 150 \
    -p no:cacheprovider >"$out/tests.log" 2>&1
  echo "== tests: exit $? in $((SECONDS - start)) s: $(tail -n 1 "$out/tests.log")" | tee -a "$log"
fi
phase kernels 40 $py "${figures[@]}" kernels
phase adapter 50 $py "${figures[@]}" adapter
phase lowp 50 $py "${figures[@]}" lowp
phase lr_free 30 $py "${figures[@]}" lr_free
phase adafactor 30 $py "${figures[@]}" adafactor
phase cpu 60 $py "${figures[@]}" cpu
# -- offload (issue 21): benchmarks/offload_gpu_check.py writes offload_check.json,
# offload_bench.json and offload_bench_accumulate8.json to the folder it is given.
if [[ -f benchmarks/offload_gpu_check.py ]]; then
  phase offload 45 $py benchmarks/offload_gpu_check.py "$out"  # writes offload_*.json there
fi
# lrfast's kernels on numba arrays against a numba copy (the issue 14 table).
if ((!dry)); then
  phase bench 30 lrfast bench --device cuda --sizes 5e7 --optimizers adam,adamw,sgd,adafactor --no-lists \
    --json "$out/bench.json"
fi
# Not in the default run (no time left for them in 9 minutes): name them.
phase profile 60 $py benchmarks/gpu_host_cost.py
phase suite 120 $py -P -m pytest -p no:cacheprovider benchmarks/bench_cuda.py -q \
  -c benchmarks/pytest.ini --benchmark-max-time=0.05 --benchmark-min-rounds=5 \
  --benchmark-columns=min,median,rounds -k "${SUITE_K:-}"
phase summary 10 bash -c "$py ${figures[*]} summary | tee '$out/summary.md'"
