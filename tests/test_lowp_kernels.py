"""16-bit params, grads and states in the C++ kernels, round to nearest even.

The oracle of every test: widen each array to the arithmetic dtype (float32,
float64 for a float64 param), run lrfast's own kernel for that dtype on the
copies, and round each written array back to its dtype (float64 -> 16 bits goes
through float32). The low-precision kernels must give exactly those bits, for
every case of tests/cases.py, every ISA and any thread count. That the float32
kernels themselves follow lrfast.reference is tests/test_kernels.py's business;
test_reference_oracle_agrees checks the chain end to end within an ulp.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")

import lrfast  # noqa: E402
from lrfast import reference  # noqa: E402
from cases import CASE_BY_NAME, CASES, call_step, holding_kind  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
STEPS = 3
TESTS = Path(__file__).parent

SIZES = (0, 1, 7, 8, 15, 16, 17, 33, 1000003)
# One list per call: every small size, a 2-d tensor, tile (512) and block
# (32768) edges crossed at offsets that are not multiples of either.
LIST_SHAPES = [(0,), (1,), (7,), (8,), (15,), (16,), (17,), (33,), (3, 5), (513,), (40000,)]


def arithmetic(dtype):
    return F64 if np.dtype(dtype) == F64 else F32


def round_to(x, dtype):
    """x rounded to nearest even in dtype (float64 to 16 bits through float32)."""
    dtype = np.dtype(dtype)
    if dtype.itemsize == 2:
        x = x.astype(F32)
    return x.astype(dtype)


def grads_for(params, step, grad_dtypes, seed=0):
    rng = np.random.default_rng((seed, step))
    return [(rng.standard_normal(p.shape) + 0.1).astype(dt) for p, dt in zip(params, grad_dtypes)]


def make(case, hp, shapes, param_dtypes, state_dtypes, seed=0):
    """Params of the given dtypes and zeroed states (state_dtypes[t] per
    tensor, but a schedule-free z that cannot hold its param: its dtype)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dt) for s, dt in zip(shapes, param_dtypes)]
    states = {name: [np.zeros(s, holding_kind(name, p.dtype, dt))
                     for s, p, dt in zip(shapes, params, state_dtypes)]
              for name in case.states_for(hp)}
    return params, states


def oracle_step(case, hp, params, grads, states, step):
    """One step of the oracle, in place on params and states."""
    wide_p = [p.astype(arithmetic(p.dtype)) for p in params]
    wide_g = [g.astype(arithmetic(p.dtype)) for p, g in zip(params, grads)]
    wide_s = {k: [s.astype(arithmetic(p.dtype)) for p, s in zip(params, v)]
              for k, v in states.items()}
    call_step(getattr(lrfast, case.step_fn), case, hp, wide_p, wide_g, wide_s, step)
    for p, w in zip(params, wide_p):
        p[...] = round_to(w, p.dtype)
    for k, v in states.items():
        for s, w in zip(v, wide_s[k]):
            s[...] = round_to(w, s.dtype)


def run(case, hp, shapes, param_dtypes, grad_dtypes, state_dtypes, fn, steps=STEPS, single=False):
    params, states = make(case, hp, shapes, param_dtypes, state_dtypes)
    for step in range(1, steps + 1):
        grads = grads_for(params, step, grad_dtypes)
        before = [g.copy() for g in grads]
        if single:
            fn(case, hp, params[0], grads[0], {k: v[0] for k, v in states.items()}, step)
        else:
            fn(case, hp, params, grads, states, step)
        for g, b in zip(grads, before):
            assert_bits_equal(g, b, "a step wrote its gradient")
    return params + [a for v in states.values() for a in v]


def lrfast_step(case, hp, params, grads, states, step):
    call_step(getattr(lrfast, case.step_fn), case, hp, params, grads, states, step)


def single_oracle_step(case, hp, p, g, states, step):
    oracle_step(case, hp, [p], [g], {k: [v] for k, v in states.items()}, step)


def assert_bits_equal(a, b, msg=""):
    assert a.dtype == b.dtype and a.shape == b.shape, msg
    bits = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    ua, ub = np.ascontiguousarray(a).view(bits), np.ascontiguousarray(b).view(bits)
    if not np.array_equal(ua, ub):
        bad = np.flatnonzero(ua.ravel() != ub.ravel())
        raise AssertionError(f"{msg}: {bad.size} of {a.size} elements differ, first at {bad[0]}: "
                             f"{a.ravel()[bad[0]]!r} vs {b.ravel()[bad[0]]!r}")


def assert_all_bits_equal(got, want, what):
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_bits_equal(a, b, f"{what}: array {i}")


def ulps(a, b):
    """Distance in units of the last place between two 16-bit arrays."""
    def ordered(x):
        v = x.view(np.int16).astype(np.int32)
        return np.where(v < 0, -32768 - v, v)
    return np.abs(ordered(a) - ordered(b))


# The dtype combinations per (param, grad, state) for one 16-bit param dtype.
def combos(param):
    return [(param, grad, state) for grad in (param, F32) for state in (F32, param, BF16)]


@pytest.mark.parametrize("param", [BF16, F16], ids=["bf16", "f16"])
def test_lists_match_the_oracle_bitwise(case, hp, param):
    n = len(LIST_SHAPES)
    for p, g, s in combos(param):
        args = (case, hp, LIST_SHAPES, [p] * n, [g] * n, [s] * n)
        assert_all_bits_equal(run(*args, lrfast_step), run(*args, oracle_step),
                              f"{case.name} {hp} params {p} grads {g} states {s}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("param", [BF16, F16], ids=["bf16", "f16"])
def test_single_arrays_match_the_oracle_bitwise(size, param):
    for case in CASES:
        if size > 100000 and case.name not in ("adamw", "sgd"):
            continue  # the large size for a few cases only
        hp = case.grid[-1]
        for p, g, s in combos(param):
            if size > 100000 and (g, s) != (F32, param):
                continue
            args = (case, hp, [(size,)], [p], [g], [s])
            assert_all_bits_equal(run(*args, lrfast_step, single=True),
                                  run(*args, single_oracle_step, single=True),
                                  f"{case.name} size {size} params {p} grads {g} states {s}")


# One list with every kind of tensor: (param, grad, state) dtypes per tensor.
MIXED = [(BF16, BF16, BF16), (F32, F32, F32), (F16, F32, F16), (F64, F64, F64),
         (BF16, F32, F32), (F32, F32, BF16), (F16, F16, BF16), (F64, F64, F32), (F64, F64, BF16),
         (BF16, BF16, F32)]
MIXED_SHAPES = [(40000,), (17,), (513,), (33000,), (0,), (7,), (3, 5), (1000,), (129,), (64,)]


def run_mixed(case, hp, fn, shapes=MIXED_SHAPES):
    p, g, s = zip(*MIXED)
    return run(case, hp, shapes, p, g, s, fn)


def test_a_list_mixing_dtypes_matches_the_oracle_bitwise(case, hp):
    assert_all_bits_equal(run_mixed(case, hp, lrfast_step), run_mixed(case, hp, oracle_step),
                          f"{case.name} {hp}")


def test_one_and_two_threads_agree_bitwise(case, hp):
    # Enough blocks (more than 4 of 32768) for the second thread to take some.
    shapes = [(300001,)] + MIXED_SHAPES[1:]
    configured = lrfast.get_num_threads()
    finals = []
    try:
        for threads in (1, 2):
            lrfast.set_num_threads(threads)
            finals.append(run_mixed(case, hp, lrfast_step, shapes))
    finally:
        lrfast.set_num_threads(configured)
    assert_all_bits_equal(finals[0], finals[1], "1 vs 2 threads")
    assert_all_bits_equal(finals[0], run_mixed(case, hp, oracle_step, shapes), "oracle")


def test_reference_oracle_agrees():
    # The chain end to end: lrfast.reference on float32 copies, rounded,
    # against the kernels (the float32 kernels and the reference differ by an
    # float32 ulp here and there, e.g. Adam multiplies by 1 / bias_correction2).
    for case in CASES:
        for hp in case.grid:
            for param in (BF16, F16):
                shapes = [(4096,)]
                got = run(case, hp, shapes, [param], [F32], [param], lrfast_step)

                def ref_step(case, hp, params, grads, states, step):
                    wide_p = [p.astype(F32) for p in params]
                    wide_s = {k: [s.astype(F32) for s in v] for k, v in states.items()}
                    call_step(getattr(reference, case.step_fn), case, hp, wide_p,
                              [g.astype(F32) for g in grads], wide_s, step)
                    for p, w in zip(params, wide_p):
                        p[...] = round_to(w, p.dtype)
                    for k, v in states.items():
                        for s, w in zip(v, wide_s[k]):
                            s[...] = round_to(w, s.dtype)

                want = run(case, hp, shapes, [param], [F32], [param], ref_step)
                for a, b in zip(got, want):
                    d = ulps(a, b)
                    assert d.max() <= 1 and np.mean(d == 0) >= 0.99, (case.name, hp, param)


# Each ISA variant below the native one, in a subprocess, against the oracle.
WORKLOAD = """
import sys, numpy as np
import lrfast
import test_lowp_kernels as t
from cases import CASES
out = {}
for case in CASES:
    for i, hp in enumerate(case.grid):
        for k, a in enumerate(t.run_mixed(case, hp, t.lrfast_step)):
            out[f"{case.name}-{i}-{k}"] = a.view(np.uint8)
g = [np.linspace(-3, 3, 1001).astype(d) for d in (t.BF16, t.F16)]
out["norms"] = np.array([lrfast.global_norm(g, p) for p in (1.0, 2.0, 3.0, float("inf"))])
print(lrfast.cpu_isa())
np.savez(sys.argv[1], **out)
"""

ORDER = ("baseline", "avx2", "avx512")


@pytest.mark.slow
@pytest.mark.parametrize("isa", ORDER)
def test_every_isa_matches_the_oracle_bitwise(isa, tmp_path):
    if ORDER.index(isa) > ORDER.index(lrfast.cpu_isa()):
        pytest.skip(f"this CPU lacks {isa}")
    path = tmp_path / "out.npz"
    out = subprocess.run([sys.executable, "-c", WORKLOAD, str(path)], cwd=TESTS,
                         env=dict(os.environ, LRFAST_CPU_ISA=isa), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa
    got = np.load(path)
    g = [np.linspace(-3, 3, 1001).astype(d) for d in (BF16, F16)]
    np.testing.assert_array_equal(
        got["norms"], [lrfast.global_norm(g, p) for p in (1.0, 2.0, 3.0, float("inf"))])
    for case in CASES:
        for i, hp in enumerate(case.grid):
            for k, want in enumerate(run_mixed(case, hp, oracle_step)):
                assert_bits_equal(got[f"{case.name}-{i}-{k}"].view(want.dtype).reshape(want.shape),
                                  want, f"{isa} {case.name} {hp} array {k}")


def test_conversions_round_to_nearest_even_and_keep_specials():
    # SGD with lr=0 writes back the param (p + 0 * g): the conversion round trip.
    # Every bfloat16 and float16 bit pattern but NaNs survives it unchanged,
    # and float32 states are rounded by a step's store as NumPy rounds them.
    for dtype in (BF16, F16):
        p = np.arange(1 << 16, dtype=np.uint16).view(dtype)
        finite = ~np.isnan(p.astype(F32))
        q = p.copy()
        lrfast.sgd_step(q, np.zeros(q.shape, dtype), lr=0.0)
        assert_bits_equal(q[finite], p[finite], "round trip")
        assert np.isnan(q[~finite].astype(F32)).all()
    # Rounding from float32: ties to even, overflow to inf, NaN stays NaN.
    rng = np.random.default_rng(0)
    wide = np.concatenate([rng.standard_normal(100000).astype(F32) * 1e3,
                           np.array([np.inf, -np.inf, np.nan, 65520.0, 65519.0, 3.4e38, -0.0,
                                     1e-45, 1e-40, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-11],
                                    F32)])
    for dtype in (BF16, F16):
        # SGD's first step stores the momentum buffer b = g: a float32 grad
        # rounded to the buffer's 16 bits.
        p = np.zeros(wide.shape, dtype)
        narrow = np.zeros(wide.shape, dtype)
        lrfast.sgd_step(p, wide, narrow, lr=0.0, momentum=0.5, step=1)
        with np.errstate(over="ignore"):
            want = wide.astype(dtype)
        nan = np.isnan(want.astype(F32))
        assert_bits_equal(narrow[~nan], want[~nan], f"{dtype} rounding")
        assert np.isnan(narrow[nan].astype(F32)).all()


def test_norms_of_16_bit_gradients():
    rng = np.random.default_rng(1)
    for dtype in (BF16, F16):
        grads = [rng.standard_normal(s).astype(dtype) for s in (100003, 7, 0, 33)]
        grads.append(rng.standard_normal(50).astype(F32))
        grads.append(rng.standard_normal(9))
        for p in (1.0, 2.0, 3.0, float("inf")):
            np.testing.assert_allclose(lrfast.global_norm(grads, p),
                                       reference.global_norm(grads, p), rtol=1e-12)
        with_nan = [g.copy() for g in grads]
        with_nan[0][5] = np.nan
        assert np.isnan(lrfast.global_norm(with_nan, float("inf")))
        assert np.isnan(lrfast.global_norm(with_nan, 2.0))


def test_clipping_16_bit_gradients():
    rng = np.random.default_rng(2)
    for dtype in (BF16, F16):
        grads = [rng.standard_normal(s).astype(dtype) for s in (70001, 5)] + [
            rng.standard_normal(9).astype(F32)]
        want = [g.astype(F32) for g in grads]
        norm = reference.global_norm(grads)
        coef = 0.5 / (norm + 1e-6)
        got_norm = lrfast.clip_grad_norm(grads, 0.5)
        np.testing.assert_allclose(got_norm, norm, rtol=1e-12)
        for g, w in zip(grads, want):
            assert_bits_equal(g, round_to(w * np.float32(coef), g.dtype), "clip_grad_norm")
        grads = [rng.standard_normal(s).astype(dtype) for s in (70001, 5)]
        want = [g.astype(F32) for g in grads]
        lrfast.clip_grad_value(grads, 0.3)
        c = np.float32(0.3)
        for g, w in zip(grads, want):
            assert_bits_equal(g, round_to(np.clip(w, -c, c), g.dtype), "clip_grad_value")


def adam_lists(param, state, grad=None, n=3):
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(10).astype(param) for _ in range(n)]
    grads = [rng.standard_normal(10).astype(grad or param) for _ in range(n)]
    return params, grads, [np.zeros(10, state) for _ in range(n)], [np.zeros(10, state) for _ in range(n)]


@pytest.mark.parametrize("bad, message", [
    (("exp_avgs", F64), r"exp_avgs[2] has dtype float64; a state of a bfloat16 param (params[2]) "
                        r"is float32 or bfloat16"),
    (("exp_avg_sqs", F16), r"exp_avg_sqs[2] has dtype float16; a state of a bfloat16 param "
                           r"(params[2]) is float32 or bfloat16"),
    (("grads", F16), r"grads[2] has dtype float16 but params[2] has bfloat16 (a grad has its "
                     r"param's dtype, or float32)"),
    (("grads", F64), r"grads[2] has dtype float64 but params[2] has bfloat16"),
])
def test_bad_dtypes_for_a_bf16_param_are_refused_before_any_write(bad, message):
    params, grads, m, v = adam_lists(BF16, BF16)
    lists = dict(params=params, grads=grads, exp_avgs=m, exp_avg_sqs=v)
    name, dtype = bad
    lists[name][2] = lists[name][2].astype(dtype)
    before = {k: [a.copy() for a in x] for k, x in lists.items()}
    with pytest.raises(TypeError, match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("]", r"\]")):
        lrfast.adamw_step(*lists.values(), lr=0.1, step=1)
    for k in lists:
        assert_all_bits_equal(lists[k], before[k], k)


def test_a_bf16_grad_for_a_float32_param_is_refused():
    params, grads, m, v = adam_lists(F32, F32)
    grads[1] = grads[1].astype(BF16)
    before = [p.copy() for p in params]
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype bfloat16 but params\[1\] has "
                                        r"float32 \(no implicit conversion\)"):
        lrfast.adam_step(params, grads, m, v, lr=0.1, step=1)
    assert_all_bits_equal(params, before, "params")
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] has dtype float16; a state of a float32 "
                                        r"param \(params\[0\]\) is float32 or bfloat16"):
        lrfast.adam_step(params, adam_lists(F32, F32)[1], [np.zeros(10, F16)] * 3, v, lr=0.1,
                         step=1)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] has dtype float64; a state of a float32"):
        lrfast.adam_step(params, adam_lists(F32, F32)[1], [np.zeros(10, F64)] + m[1:], v,
                         lr=0.1, step=1)


def test_ml_dtypes_is_imported_only_for_a_bfloat16_array():
    code = ("import sys, numpy as np, lrfast\n"
            "p = np.zeros(4, np.float16); lrfast.sgd_step(p, np.ones(4, np.float16), lr=0.1)\n"
            "lrfast.sgd_step(np.zeros(4, np.float32), np.ones(4, np.float32), lr=0.1)\n"
            "print('ml_dtypes' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=TESTS, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_tensors_run_without_copies(dtype):
    torch = _torch()
    case = CASE_BY_NAME["adamw"]
    hp = case.grid[-1]
    np_dtype = BF16 if dtype == "bfloat16" else F16
    shapes = [(1000,), (33,)]
    want = run(case, hp, shapes, [np_dtype] * 2, [np_dtype, F32], [BF16, np_dtype], oracle_step)
    params, states = make(case, hp, shapes, [np_dtype] * 2, [BF16, np_dtype])

    def as_torch(a):  # a tensor of the NumPy array's memory
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16 if a.dtype == BF16 else
                                                        torch.float16)

    t_params = [as_torch(p) for p in params]
    t_states = {k: [as_torch(s) for s in v] for k, v in states.items()}
    pointers = [t.data_ptr() for t in t_params]
    for step in range(1, STEPS + 1):
        grads = grads_for(params, step, [np_dtype, F32])
        t_grads = [as_torch(grads[0]), torch.from_numpy(grads[1])]
        call_step(lrfast.adamw_step, case, hp, t_params, t_grads, t_states, step)
    assert [t.data_ptr() for t in t_params] == pointers
    assert_all_bits_equal(params + [a for v in states.values() for a in v], want, dtype)


def _torch_fused_sgd_updates_bf16(torch):
    p = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    p.grad = torch.ones_like(p)
    torch.optim.SGD([p], lr=1.0, fused=True).step()
    return bool((p.detach() == 0).all())


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "Adagrad"])
def test_torch_fused_bf16_agrees_within_an_ulp(name):
    torch = _torch()
    if name == "SGD" and not _torch_fused_sgd_updates_bf16(torch):
        pytest.skip("this torch's fused CPU SGD leaves bfloat16 params unchanged (torch 2.13: "
                    "a tensor of 64 ones, grad 1, lr 1 stays at 1)")
    kwargs = {"Adam": dict(lr=1e-2, weight_decay=0.1), "AdamW": dict(lr=1e-2),
              "SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
              "Adagrad": dict(lr=0.1, lr_decay=0.01)}[name]
    step_fn = {"Adam": lrfast.adam_step, "AdamW": lrfast.adamw_step, "SGD": lrfast.sgd_step,
               "Adagrad": lrfast.adagrad_step}[name]
    rng = np.random.default_rng(4)
    n = 100003
    p0 = rng.standard_normal(n).astype(np.float32)
    tp = torch.nn.Parameter(torch.from_numpy(p0).to(torch.bfloat16))
    opt = getattr(torch.optim, name)([tp], fused=True, **kwargs)
    p = p0.astype(BF16)
    states = [np.zeros(n, BF16) for _ in range({"SGD": 1, "Adagrad": 1}.get(name, 2))]
    for step in range(1, 4):
        g = (rng.standard_normal(n) + 0.1).astype(BF16)
        tp.grad = torch.from_numpy(g.view(np.int16)).view(torch.bfloat16).clone()
        opt.step()
        step_fn(p, g, *states, **kwargs, step=step)
    got = tp.detach().view(torch.int16).numpy().view(BF16)
    if name == "Adagrad":
        # torch divides by the square root of the sum after rounding it to
        # bfloat16, lrfast (as lrfast.reference) by that of the unrounded sum:
        # g / sqrt(s) differs by an ulp of the update, which p - update
        # magnifies where it cancels, and the sums drift apart over the steps.
        # So ulps of the operands (|p| or lr), not of the result. (torch also
        # rounds g + weight_decay * p to bfloat16: no weight decay here.)
        scale = np.maximum(np.abs(p.astype(F32)), kwargs["lr"])
        err = np.abs(got.astype(F32) - p.astype(F32)) / 2.0 ** (np.floor(np.log2(scale)) - 7)
        assert err.max() <= 4 and np.mean(err <= 1) >= 0.99
    else:
        assert ulps(got, p).max() <= 1
        assert np.mean(ulps(got, p) == 0) >= 0.99
