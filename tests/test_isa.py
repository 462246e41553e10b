"""The run-time ISA dispatch: LRFAST_CPU_ISA caps the choice, every variant this
CPU supports passes the kernel suite, and all variants give the same bits."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lrfast
from cases import CASES, call_step, gradients, make_problem

ORDER = ("baseline", "avx2", "avx512")
TESTS = Path(__file__).parent


# Subprocesses run in the tests folder: from the repository root, `import lrfast`
# would find the source folder rather than the installed package.
def run_python(code, isa, *args):
    env = dict(os.environ, LRFAST_CPU_ISA=isa)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=TESTS,
                          capture_output=True, text=True, timeout=600)


def supported():
    return ORDER[: ORDER.index(lrfast.cpu_isa()) + 1]


def test_native_isa_is_known():
    assert lrfast.cpu_isa() in ORDER


@pytest.mark.parametrize("isa", ORDER)
def test_cap_selects_the_variant(isa):
    out = run_python("import lrfast; print(lrfast.cpu_isa())", isa)
    assert out.returncode == 0, out.stderr
    expected = isa if isa in supported() else lrfast.cpu_isa()
    assert out.stdout.strip() == expected


def test_unknown_cap_warns():
    out = run_python("import lrfast; print(lrfast.cpu_isa())", "sse9")
    assert "ignoring LRFAST_CPU_ISA=sse9" in out.stderr
    assert out.stdout.strip() == lrfast.cpu_isa()


SHAPES = [(1000003,), (17,), (7,), (0,), (40000,)]

# Runs every case for three steps and saves the final arrays.
WORKLOAD = """
import sys, ml_dtypes, numpy as np, lrfast
from cases import CASES, call_step, gradients, make_problem
shapes = [(1000003,), (17,), (7,), (0,), (40000,)]
out = {}
for case in CASES:
    for i, hp in enumerate(case.grid):
        for dtype in (np.float32, np.float64):
            params, states = make_problem(case, hp, shapes, dtype)
            for step in range(1, 4):
                call_step(getattr(lrfast, case.step_fn), case, hp, params,
                          gradients(shapes, dtype, step), states, step)
            arrays = params + [a for v in states.values() for a in v]
            out[f"{case.name}-{i}-{np.dtype(dtype).name}"] = np.concatenate(arrays)
grads = gradients(shapes, np.float32, 1)
for slice_p in (1, 3, 11):  # Prodigy's reduction: its float64 sums and s
    params = gradients(shapes, np.float32, 2)
    s = [np.zeros(-(-p.size // slice_p), np.float32) for p in params]
    p0 = [np.ones(x.shape, np.float32) for x in s]
    sums = lrfast.prodigy_reduce(params, grads, s, p0, d=1e-3, d0=1e-6, dlr=1e-3, slice_p=slice_p)
    out[f"prodigy_reduce-{slice_p}"] = np.concatenate([np.array(sums)] + s)
    # the same through the tiles: bfloat16 params and p0, q8 s
    bf16 = [x.astype(ml_dtypes.bfloat16) for x in params]
    q8 = [lrfast.zeros_state(x, "q8") for x in s]
    sums = lrfast.prodigy_reduce(bf16, grads, q8, [x.astype(ml_dtypes.bfloat16) for x in p0],
                                 d=1e-3, d0=1e-6, dlr=1e-3, slice_p=slice_p)
    out[f"prodigy_reduce-{slice_p}-bf16-q8"] = np.concatenate(
        [np.array(sums)] + [np.concatenate([x.codes.ravel(), x.absmax.view(np.uint8)])
                            if isinstance(x, lrfast.Q8State) else x.view(np.uint8) for x in q8])
out["norms"] = np.array([lrfast.global_norm(grads, p) for p in (1.0, 2.0, 3.0, float("inf"))])
np.savez(sys.argv[1], **out)
"""


@pytest.mark.slow
def test_all_variants_give_identical_bits(tmp_path):
    # Kernels are compiled without FMA contraction or fast-math and the norms
    # sum in a fixed lane order, so the ISA changes the speed, not the bits.
    results = {}
    for isa in supported():
        path = tmp_path / f"{isa}.npz"
        out = run_python(WORKLOAD, isa, str(path))
        assert out.returncode == 0, out.stderr
        results[isa] = np.load(path)
    first, *others = results.values()
    for other in others:
        assert first.files == other.files
        for key in first.files:
            np.testing.assert_array_equal(first[key], other[key], err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ORDER[:-1])
def test_kernel_suite_under_variant(isa):
    """The kernel suite under each variant below the native one (the native
    one runs in the main session). The 1000003-element size is left to the
    bitwise comparison above, which covers it for every variant."""
    if isa not in supported():
        pytest.skip(f"this CPU lacks {isa}")
    if isa == lrfast.cpu_isa():
        pytest.skip(f"{isa} is this CPU's best: the main session runs the suite with it")
    env = dict(os.environ, LRFAST_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "-k", "not 1000003", str(TESTS / "test_kernels.py"),
                          str(TESTS / "test_clip.py"), str(TESTS / "test_lr_free_kernels.py")],
                         env=env, cwd=TESTS, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout
