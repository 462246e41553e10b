"""Every fused step against its NumPy reference: 10 steps with fresh non-zero
gradients, every case of tests/cases.py, both dtypes, sizes around the SIMD
widths and the block size, single arrays and lists of mixed sizes."""

import numpy as np
import pytest

import lrfast
from lrfast import reference
from cases import CASES, SIZES, assert_close, call_step, gradients, make_problem

STEPS = 10


def run_both(case, hp, shapes, dtype, single=False):
    """Runs lrfast and the reference side by side; returns both final states."""
    results = []
    for impl in (lrfast, reference):
        params, states = make_problem(case, hp, shapes, dtype)
        fn = getattr(impl, case.step_fn)
        for step in range(1, STEPS + 1):
            grads = gradients(shapes, dtype, step)
            before = [g.copy() for g in grads]
            if single:
                call_step(fn, case, hp, params[0], grads[0],
                          {k: v[0] for k, v in states.items()}, step)
            else:
                call_step(fn, case, hp, params, grads, states, step)
            for g, b in zip(grads, before):
                np.testing.assert_array_equal(g, b, err_msg="a step wrote its gradient")
        results.append((params, states))
    return results


@pytest.mark.parametrize("size", SIZES)
def test_single_array_matches_reference(case, hp, dtype, size):
    got, want = run_both(case, hp, [(size,)], dtype, single=True)
    assert_close(case, dtype, got, want)


MIXED_SHAPES = [(3, 5), (17,), (0,), (1,), (2, 3, 4), (40000,), (8,), (33000,)]


def test_list_matches_reference(case, hp, dtype):
    got, want = run_both(case, hp, MIXED_SHAPES, dtype)
    assert_close(case, dtype, got, want)


def test_mixed_dtypes_in_one_list(case, hp):
    # Each tensor keeps its own dtype; float32 and float64 tensors share a call.
    shapes = [(100,), (37,)]
    results = []
    for impl in (lrfast, reference):
        p32, s32 = make_problem(case, hp, shapes[:1], np.float32)
        p64, s64 = make_problem(case, hp, shapes[1:], np.float64)
        params = p32 + p64
        states = {k: s32[k] + s64[k] for k in s32}
        for step in range(1, 4):
            grads = gradients(shapes[:1], np.float32, step) + gradients(shapes[1:], np.float64, step)
            call_step(getattr(impl, case.step_fn), case, hp, params, grads, states, step)
        results.append(params)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_one_thread_and_many_threads_agree_bitwise(case, hp):
    shapes = [(300001,), (5,), (70000,)]
    finals, configured = [], lrfast.get_num_threads()
    for threads in (1, 2, 3):
        lrfast.set_num_threads(threads)
        try:
            params, states = make_problem(case, hp, shapes, np.float32)
            for step in range(1, 4):
                call_step(getattr(lrfast, case.step_fn), case, hp, params,
                          gradients(shapes, np.float32, step), states, step)
        finally:
            lrfast.set_num_threads(configured)
        finals.append(params + [a for v in states.values() for a in v])
    for other in finals[1:]:
        for a, b in zip(finals[0], other):
            np.testing.assert_array_equal(a, b)


def test_thread_count_is_checked():
    configured = lrfast.get_num_threads()
    with pytest.raises(ValueError, match="n must be >= 1"):
        lrfast.set_num_threads(0)
    assert lrfast.get_num_threads() == configured


def test_concurrent_calls_from_python_threads():
    # The GIL is released during a step: calls from several threads run at once
    # (one uses the pool, the others their own thread) and give the same bits.
    import threading

    case = next(c for c in CASES if c.name == "adam")
    hp = case.grid[0]
    shapes = [(200003,), (70000,)]
    problems = [make_problem(case, hp, shapes, np.float32, seed=k) for k in range(4)]
    expected = []
    for params, states in problems:
        params, states = [p.copy() for p in params], {k: [a.copy() for a in v] for k, v in states.items()}
        for step in range(1, 6):
            call_step(lrfast.adam_step, case, hp, params, gradients(shapes, np.float32, step),
                      states, step)
        expected.append(params)

    def work(params, states):
        for step in range(1, 6):
            call_step(lrfast.adam_step, case, hp, params, gradients(shapes, np.float32, step),
                      states, step)

    threads = [threading.Thread(target=work, args=problem) for problem in problems]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (params, _), want in zip(problems, expected):
        for a, b in zip(params, want):
            np.testing.assert_array_equal(a, b)
