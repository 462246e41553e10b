"""The CUDA back end against the NumPy reference and the C++ path's checks.

Runs on a real GPU when one is visible, and otherwise in Numba's CUDA
simulator, where "device memory" is host memory: a device array is then a
NumPy array exported through ``__cuda_array_interface__``, and the kernels run
as Python threads (so sizes stay small). The launch geometry is small in the
simulator (lrfast/cuda/launch.py) so that these sizes still cross piece
boundaries and the grid-stride loops wrap.
"""

import copy
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest


from cuda_sim import (  # before numba: GPU or simulator
    Exported, SimulatedDeviceArray, assert_same, numba_cuda, to_device)

cuda = numba_cuda()

import lrfast  # noqa: E402
import lrfast.cuda  # noqa: E402
from lrfast import _core, reference  # noqa: E402
from lrfast.cuda import launch, layout, ops  # noqa: E402
from cases import CASE_BY_NAME, CASES, assert_close, call_step, gradients, make_problem  # noqa: E402

SIMULATED = launch.SIMULATED
STEPS = 5
LIST_SHAPES = [(0,), (1,), (7,), (17,), (33,), (3, 5)]

if SIMULATED:
    # The simulator computes in NumPy scalars, which warn where a GPU quietly
    # gives inf or NaN (the NaN and inf tests below).
    pytestmark = pytest.mark.filterwarnings(
        "ignore:(overflow|invalid value) encountered in scalar:RuntimeWarning")

device = to_device


def host(d):
    return d.copy_to_host()


# -- every case against the reference ----------------------------------------

def run_on_device(case, hp, shapes, dtype, steps=STEPS):
    params, states = make_problem(case, hp, shapes, dtype)
    d_params = [device(p) for p in params]
    d_states = {name: [device(a) for a in arrays] for name, arrays in states.items()}
    for step in range(1, steps + 1):
        grads = gradients(shapes, dtype, step)
        d_grads = [device(g) for g in grads]
        call_step(getattr(lrfast, case.step_fn), case, hp, d_params, d_grads, d_states, step)
        for g, d in zip(grads, d_grads):
            np.testing.assert_array_equal(host(d), g, err_msg="a step wrote its gradient")
    return [host(p) for p in d_params], {k: [host(a) for a in v] for k, v in d_states.items()}


def run_reference(case, hp, shapes, dtype, steps=STEPS):
    params, states = make_problem(case, hp, shapes, dtype)
    for step in range(1, steps + 1):
        call_step(getattr(reference, case.step_fn), case, hp, params,
                  gradients(shapes, dtype, step), states, step)
    return params, states


def assert_matches_reference(case, hp, shapes, dtype):
    assert_close(case, dtype, run_on_device(case, hp, shapes, dtype),
                 run_reference(case, hp, shapes, dtype))


def test_list_matches_reference(case, hp, dtype):
    assert_matches_reference(case, hp, LIST_SHAPES, dtype)


@pytest.mark.parametrize("size", [0, 1, 7, 17, 33])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_single_array_matches_reference(case, dtype, size):
    hp = case.grid[-1]
    params, states = make_problem(case, hp, [(size,)], dtype)
    d_param, d_states = device(params[0]), {k: device(v[0]) for k, v in states.items()}
    for step in range(1, STEPS + 1):
        grad = gradients([(size,)], dtype, step)[0]
        call_step(getattr(lrfast, case.step_fn), case, hp, d_param, device(grad), d_states, step)
        call_step(getattr(reference, case.step_fn), case, hp, params[0], grad,
                  {k: v[0] for k, v in states.items()}, step)
    rtol, atol = case.tol[dtype]
    np.testing.assert_allclose(host(d_param), params[0], rtol=rtol, atol=atol)


def test_tensors_split_across_pieces(dtype):
    n = launch.CHUNK
    assert_matches_reference(CASE_BY_NAME["adam"], dict(lr=1e-2, amsgrad=True),
                             [(n - 1,), (n,), (n + 1,), (2 * n + 3,)], dtype)


def _one_element_in(a):
    """A device copy of the 1-D array `a` that starts one element into its
    allocation: aligned to its elements, not to a vector of them."""
    buf = np.zeros(a.size + 1, a.dtype)
    buf[1:] = a
    return SimulatedDeviceArray(buf[1:]) if SIMULATED else cuda.to_device(buf)[1:]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_vector_and_scalar_accesses_give_the_same_bits(case, dtype):
    # Aligned arrays take the vector path on their whole tiles, arrays one
    # element in the strided one; sizes around a tile hold whole and partial ones.
    hp, shapes = case.grid[-1], [(launch.TILE - 1,), (launch.TILE,), (2 * launch.TILE + 3,)]
    results = []
    for make, vector in ((device, 1), (_one_element_in, 0)):
        params, states = make_problem(case, hp, shapes, dtype)
        d_params = [make(p) for p in params]
        d_states = {k: [make(a) for a in v] for k, v in states.items()}
        for step in range(1, STEPS + 1):
            d_grads = [make(g) for g in gradients(shapes, dtype, step)]
            groups, _ = layout.prepare((d_params, d_grads), ("params", "grads"), False)
            assert set(groups[0].table.copy_to_host()[:, launch.VECTOR]) == {vector}
            call_step(getattr(lrfast, case.step_fn), case, hp, d_params, d_grads, d_states, step)
        results.append([host(a) for a in d_params + [a for v in d_states.values() for a in v]])
    for got, want in zip(*results):
        assert_same(got, want, case.name)


def test_float32_and_float64_in_one_list():
    case, hp, shapes = CASE_BY_NAME["adamw"], dict(lr=1e-2), [(9,), (20,)]
    results = []
    for impl, wrap, unwrap in ((lrfast, device, host), (reference, np.copy, np.copy)):
        (p32,), s32 = make_problem(case, hp, shapes[:1], np.float32)
        (p64,), s64 = make_problem(case, hp, shapes[1:], np.float64)
        params = [wrap(p32), wrap(p64)]
        states = {k: [wrap(s32[k][0]), wrap(s64[k][0])] for k in s32}
        for step in range(1, 4):
            grads = gradients(shapes[:1], np.float32, step) + gradients(shapes[1:], np.float64, step)
            call_step(getattr(impl, case.step_fn), case, hp, params, [wrap(g) for g in grads],
                      states, step)
        results.append([unwrap(p) for p in params])
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


# -- norms and clipping -------------------------------------------------------

NORM_TYPES = [1.0, 2.0, 3.5, 0.5, float("inf")]


@pytest.mark.parametrize("p", NORM_TYPES)
def test_global_norm_matches_reference(dtype, p):
    grads = gradients(LIST_SHAPES, dtype, 1)
    got = lrfast.global_norm([device(g) for g in grads], p)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, reference.global_norm(grads, p), rtol=1e-12)


@pytest.mark.parametrize("p", NORM_TYPES)
def test_global_norm_is_the_same_for_any_grid(monkeypatch, p):
    # One partial per piece, whichever block computes it: the grid size
    # cannot change the bits.
    grads = [device(g) for g in gradients([(100,), (37,), (5,)], np.float32, 1)]
    wide = lrfast.global_norm(grads, p)
    monkeypatch.setattr(launch, "max_blocks", lambda: 1)
    assert lrfast.global_norm(grads, p) == wide


@pytest.mark.parametrize("p", [2.0, float("inf")])
def test_global_norm_propagates_nan(dtype, p):
    g = np.ones(40, dtype)
    g[37] = np.nan
    assert np.isnan(lrfast.global_norm([device(np.ones(3, dtype)), device(g)], p))


def test_global_norm_of_empty_tensors_is_zero():
    assert lrfast.global_norm([device(np.zeros(0, np.float32))]) == 0.0


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_reference(dtype, max_norm):
    grads = gradients(LIST_SHAPES, dtype, 2)
    d_grads = [device(g) for g in grads]
    got = lrfast.clip_grad_norm(d_grads, max_norm)
    want = reference.clip_grad_norm(grads, max_norm)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for d, g in zip(d_grads, grads):
        np.testing.assert_allclose(host(d), g, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_clip_grad_norm_refuses_a_nonfinite_norm_before_writing():
    g = np.full(10, 3.0, np.float32)
    g[4] = np.inf
    d = device(g)
    with pytest.raises(RuntimeError, match="non-finite"):
        lrfast.clip_grad_norm([d], 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(host(d), g)
    assert lrfast.clip_grad_norm([d], 1.0) == np.inf  # scaled by 0 (inf becomes NaN), as torch


def test_clip_grad_value_matches_reference(dtype):
    grads = gradients(LIST_SHAPES, dtype, 3)
    grads[2][3] = np.nan
    d_grads = [device(g) for g in grads]
    lrfast.clip_grad_value(d_grads, 0.7)
    reference.clip_grad_value(grads, 0.7)
    for d, g in zip(d_grads, grads):
        np.testing.assert_array_equal(host(d), g)


# -- many tensors, few launches ----------------------------------------------

def test_a_thousand_tensors_cost_one_launch_per_step():
    case, hp, shapes = CASE_BY_NAME["adam"], dict(lr=1e-2), [(3,)] * 1000
    params, states = make_problem(case, hp, shapes, np.float32)
    grads = gradients(shapes, np.float32, 1)
    d_params = [device(p) for p in params]
    d_states = {k: [device(a) for a in v] for k, v in states.items()}
    d_grads = [device(g) for g in grads]
    tables = lrfast.cuda.tables_built()
    for step in (1, 2):
        before = lrfast.cuda.launch_count()
        call_step(lrfast.adam_step, case, hp, d_params, d_grads, d_states, step)
        assert lrfast.cuda.launch_count() - before == 1
        call_step(reference.adam_step, case, hp, params, grads, states, step)
    assert lrfast.cuda.tables_built() - tables == 1  # the second step reused the table
    np.testing.assert_allclose(np.concatenate([host(p) for p in d_params]),
                               np.concatenate(params), rtol=2e-5, atol=2e-6)


def test_a_list_costs_one_norm_launch():
    # (20 tensors, not 1000: the simulator is slow at the norm's barriers)
    grads = [device(g) for g in gradients([(3,)] * 20, np.float32, 1)]
    before = lrfast.cuda.launch_count()
    lrfast.clip_grad_norm(grads, 1.0)
    assert lrfast.cuda.launch_count() - before == 2  # the norm, then the scale


def test_a_list_of_two_dtypes_costs_two_launches():
    before = lrfast.cuda.launch_count()
    lrfast.sgd_step([device(np.ones(5, np.float32)), device(np.ones(5, np.float64))],
                    [device(np.ones(5, np.float32)), device(np.ones(5, np.float64))], lr=0.1)
    assert lrfast.cuda.launch_count() - before == 2


def test_empty_tensors_launch_nothing():
    before = lrfast.cuda.launch_count()
    z = [device(np.zeros(0, np.float32))]
    lrfast.sgd_step(z, [device(np.zeros(0, np.float32))], lr=0.1)
    assert lrfast.cuda.launch_count() == before


# -- checks: the C++ path's messages, nothing written ----------------------------

class OnHost:
    """Builds the arrays of a bad call on the host."""

    array = staticmethod(np.copy)

    @staticmethod
    def read_only(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    @staticmethod
    def every_other(a):
        return np.repeat(a, 2)[::2]


class OnDevice:
    """Builds the same bad call with device arrays."""

    array = staticmethod(device)

    @staticmethod
    def read_only(a):
        return Exported(device(a), readonly=True)

    @staticmethod
    def every_other(a):
        return Exported(device(np.repeat(a, 2)), shape=a.shape, strides=(2 * a.itemsize,))


def _adam(params, grads, exp_avgs, exp_avg_sqs):
    lrfast.adam_step(params, grads, exp_avgs, exp_avg_sqs, step=1)


def _z(n=4, dtype=np.float32):
    return np.zeros(n, dtype)


BAD_CALLS = {
    "dtype": lambda on: _adam([on.array(_z()), on.array(_z(4, np.int32))],
                              [on.array(_z()), on.array(_z())], [on.array(_z())] * 2,
                              [on.array(_z())] * 2),
    "mixed dtypes": lambda on: _adam([on.array(_z())], [on.array(_z(4, np.float64))],
                                     [on.array(_z())], [on.array(_z())]),
    "shape": lambda on: _adam([on.array(_z(4))], [on.array(_z(5))], [on.array(_z(4))],
                              [on.array(_z(4))]),
    "length": lambda on: _adam([on.array(_z())], [on.array(_z())], [on.array(_z())],
                               [on.array(_z()), on.array(_z())]),
    "read-only param": lambda on: _adam([on.read_only(_z())], [on.array(_z())],
                                        [on.array(_z())], [on.array(_z())]),
    "read-only grad to clip": lambda on: lrfast.clip_grad_value([on.read_only(_z())], 1.0),
    "not contiguous": lambda on: _adam([on.array(_z())], [on.every_other(_z())],
                                       [on.array(_z())], [on.array(_z())]),
}


def _alias(on):
    p = on.array(np.ones(4, np.float32))
    _adam([p], [on.array(_z())], [p], [on.array(_z())])


BAD_CALLS["alias"] = _alias


@pytest.mark.parametrize("bad", BAD_CALLS)
def test_bad_input_gives_the_cpu_message(bad):
    with pytest.raises((TypeError, ValueError)) as on_host:
        BAD_CALLS[bad](OnHost)
    with pytest.raises(on_host.type) as on_device:
        BAD_CALLS[bad](OnDevice)
    assert str(on_device.value) == str(on_host.value)


def test_a_bad_array_late_in_a_list_leaves_the_list_untouched():
    params = [device(np.ones(4, np.float32)) for _ in range(3)]
    grads = [device(np.ones(4, np.float32)), device(np.ones(4, np.float32)),
             device(np.ones(5, np.float32))]
    with pytest.raises(ValueError, match=r"grads\[2\]"):
        lrfast.sgd_step(params, grads, lr=0.5)
    for p in params:
        np.testing.assert_array_equal(host(p), np.ones(4, np.float32))


def test_host_array_in_a_device_call_is_refused_before_writing():
    params = [device(np.ones(4, np.float32)), device(np.ones(4, np.float32))]
    with pytest.raises(TypeError, match=r"grads\[1\] is not a CUDA device array.*params\[0\]"):
        lrfast.sgd_step(params, [device(np.ones(4, np.float32)), np.ones(4, np.float32)], lr=0.5)
    with pytest.raises(TypeError, match=r"grads\[1\] is not a CUDA device array.*grads\[0\]"):
        lrfast.clip_grad_value([device(np.ones(4, np.float32)), np.ones(4, np.float32)], 0.1)
    for p in params:
        np.testing.assert_array_equal(host(p), np.ones(4, np.float32))


def test_device_array_in_a_host_call_is_refused():
    with pytest.raises(TypeError, match=r"grads\[0\] is a CUDA device array"):
        lrfast.sgd_step([np.ones(4, np.float32)], [device(np.ones(4, np.float32))], lr=0.5)


def test_masked_arrays_are_refused():
    masked = Exported(device(np.ones(4, np.float32)), mask=device(np.ones(4, np.bool_)))
    with pytest.raises(TypeError, match=r"grads\[0\] is a masked"):
        lrfast.global_norm([masked])


def test_the_checks_never_read_device_memory():
    # Host views of unmapped addresses: reading one would crash the process.
    code = """if True:
        from lrfast import _core
        from lrfast.cuda.layout import HostView
        def view(address, n=1000):
            return HostView({"shape": (n,), "typestr": "<f4", "data": (address, False),
                             "version": 3})
        _core.check(([view(16)], [view(16 + 4000)]), ("params", "grads"), False)
        try:
            _core.check(([view(64)], [view(64 + 3996)]), ("params", "grads"), False)
        except ValueError as e:
            print(e)
    """
    # cwd: the tests folder, where `import lrfast` finds the installed package
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
                          cwd=os.path.dirname(__file__))
    assert done.returncode == 0, done.stderr
    assert "params[0] and grads[0] overlap in memory" in done.stdout


def test_numpy_without_row_stack_gets_the_alias_numba_cuda_needs():
    # NumPy 2.5 removed np.row_stack, which numba-cuda 0.30.4 looks up when it
    # compiles its first kernel; lrfast restores the alias before any launch.
    code = """if True:
        import numpy as np
        if hasattr(np, "row_stack"):  # NumPy < 2.5
            del np.row_stack
        import lrfast.cuda.launch
        assert np.row_stack is np.vstack
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), timeout=120)
    assert done.returncode == 0, done.stderr


def test_backend_has_the_functions_of_core():
    # The kernels: the functions of (arrays, names, hparams, ...), steps, Prodigy's
    # reduction and Adafactor (whose own checks take check_only).
    kernels = {name for name in dir(_core) if (getattr(_core, name).__doc__ or "").startswith(
        f"{name}(arrays: tuple, names: tuple, hparams: dict")}
    assert {"prodigy_reduce", "adafactor"} <= kernels
    assert set(ops.__all__) == kernels | {"global_norm", "clip_grad_norm", "clip_grad_value"}
    assert all(callable(getattr(_core, name)) for name in ops.__all__)
    assert lrfast.cuda.backend() is ops


def test_unchanged_layout_is_checked_and_uploaded_once():
    p, g = device(np.ones(6, np.float32)), device(np.ones(6, np.float32))
    tables = lrfast.cuda.tables_built()
    for _ in range(3):
        lrfast.sgd_step([p], [g], lr=0.5)
    assert lrfast.cuda.tables_built() - tables == 1
    np.testing.assert_allclose(host(p), np.full(6, -0.5, np.float32))
    assert len(layout._cache) <= layout.CACHED_LAYOUTS


# -- the fast path: a call like the last one -------------------------------------

simulator_only = pytest.mark.skipif(not SIMULATED, reason="shows host memory as device memory")


@pytest.fixture
def fixed(monkeypatch):
    """In the simulator, device() arrays stand for numba's DeviceNDArray, whose
    interface cannot change: the same object is trusted by identity."""
    if SIMULATED:
        monkeypatch.setattr(layout, "FIXED_TYPES", layout.FIXED_TYPES | {SimulatedDeviceArray})


@pytest.fixture
def checks(monkeypatch):
    """The calls of lrfast._core.check made during the test."""
    calls, check = [], _core.check
    monkeypatch.setattr(_core, "check",
                        lambda *args, **kw: calls.append(args) or check(*args, **kw))
    return calls


@pytest.fixture
def reads(monkeypatch):
    """The arrays whose interface the layout reads during the test."""
    calls, read = [], layout._interface

    def counted(obj, *args):
        calls.append(obj)
        return read(obj, *args)

    monkeypatch.setattr(layout, "_interface", counted)
    return calls


def adam_lists(n):
    """params, grads, exp_avgs, exp_avg_sqs: `n` float32 device arrays of 3 each."""
    return tuple([device(np.full(3, value, np.float32)) for _ in range(n)]
                 for value in (1.0, 0.5, 0.0, 0.0))


def fill(d, a):
    """Writes the host array `a` into the device array `d`."""
    if SIMULATED:
        d._host[...] = a
    else:
        d.copy_to_device(a)


def alias(d):
    """Another device array object over the memory of `d`."""
    return SimulatedDeviceArray(d._host) if SIMULATED else cuda.as_cuda_array(d)


def test_a_call_like_the_last_reads_and_checks_nothing(fixed, checks, reads):
    params, grads, exp_avgs, exp_avg_sqs = adam_lists(50)
    _adam(params, grads, exp_avgs, exp_avg_sqs)
    assert len(reads) >= 200
    tables, n_reads = lrfast.cuda.tables_built(), len(reads)
    for _ in range(3):  # new lists of the same arrays
        _adam(list(params), list(grads), list(exp_avgs), exp_avg_sqs)
    assert len(checks) == 1
    assert lrfast.cuda.tables_built() == tables
    assert reads[n_reads:] == [params[0]] * 3  # for its stream


def test_steps_on_the_fast_path_match_the_reference(fixed, checks):
    case, hp = CASE_BY_NAME["adam"], dict(lr=1e-2, amsgrad=True, weight_decay=0.1)
    params, states = make_problem(case, hp, LIST_SHAPES, np.float32)
    d_params = [device(p) for p in params]
    d_states = {k: [device(a) for a in v] for k, v in states.items()}
    d_grads = [device(np.zeros(s, np.float32)) for s in LIST_SHAPES]
    for step in range(1, STEPS + 1):
        grads = gradients(LIST_SHAPES, np.float32, step)
        for d, g in zip(d_grads, grads):
            fill(d, g)  # a framework's way: new values in the same buffers
        call_step(lrfast.adam_step, case, hp, d_params, d_grads, d_states, step)
        call_step(reference.adam_step, case, hp, params, grads, states, step)
    assert len(checks) == 1
    for i, (d, p) in enumerate(zip(d_params, params)):
        np.testing.assert_allclose(host(d), p, rtol=2e-5, atol=2e-6, err_msg=f"params[{i}]")


def test_an_element_replaced_in_the_list_is_checked(fixed, checks):
    params, grads, exp_avgs, exp_avg_sqs = adam_lists(5)
    _adam(params, grads, exp_avgs, exp_avg_sqs)
    after_one_step = [host(p) for p in params]
    for bad, error, message in [
            (device(np.zeros(3, np.float16)), TypeError, r"^grads\[3\] has dtype float16"),
            (device(np.zeros(4, np.float32)), ValueError, r"^grads\[3\] has shape \(4,\)"),
            (alias(params[1]), ValueError,
             r"^(params\[1\] and grads\[3\]|grads\[3\] and params\[1\]) overlap")]:
        grads[3] = bad  # in the same list object
        with pytest.raises(error, match=message):
            _adam(params, grads, exp_avgs, exp_avg_sqs)
    for p, before in zip(params, after_one_step):
        np.testing.assert_array_equal(host(p), before)

    # Another object over the same memory: nothing to check or upload again.
    grads[3] = device(np.full(3, 0.5, np.float32))
    _adam(params, grads, exp_avgs, exp_avg_sqs)
    tables, n_checks = lrfast.cuda.tables_built(), len(checks)
    grads[3] = alias(grads[3])
    _adam(params, grads, exp_avgs, exp_avg_sqs)
    assert (lrfast.cuda.tables_built(), len(checks)) == (tables, n_checks)


@simulator_only
def test_a_new_array_at_the_id_of_a_freed_one_is_checked(fixed):
    params, grads, exp_avgs, exp_avg_sqs = adam_lists(3)
    _adam(params, grads, exp_avgs, exp_avg_sqs)
    freed = id(grads[1])
    grads[1] = None
    # CPython gives the freed memory to a later object of the same size.
    new = SimulatedDeviceArray.__new__
    bad = next((a for a in [new(SimulatedDeviceArray) for _ in range(10_000)] if id(a) == freed),
               None)
    if bad is None:
        pytest.skip("the freed id went to another object")
    bad._host = np.zeros(3, np.float16)  # another layout
    grads[1] = bad
    with pytest.raises(TypeError, match=r"^grads\[1\] has dtype float16"):
        _adam(params, grads, exp_avgs, exp_avg_sqs)


def test_the_fast_path_keeps_no_array_alive(fixed):
    params, grads, exp_avgs, exp_avg_sqs = adam_lists(3)
    _adam(params, grads, exp_avgs, exp_avg_sqs)
    _adam(params, grads, exp_avgs, exp_avg_sqs)
    refs = [weakref.ref(g) for g in grads]
    del grads
    assert all(ref() is None for ref in refs)


class Movable(SimulatedDeviceArray):
    """A device array whose memory can be swapped under the same object, as
    an unknown type's may: not trusted by identity."""

    def move_to(self, host_array):
        self._host = host_array


@simulator_only
def test_an_unknown_array_type_is_read_at_every_call(checks):
    params, grads = [Movable(np.ones(4, np.float32))], [Movable(np.ones(4, np.float32))]
    lrfast.sgd_step(params, grads, lr=0.5)
    lrfast.sgd_step(params, grads, lr=0.5)
    assert len(checks) == 1
    grads[0].move_to(np.ones(5, np.float32))
    with pytest.raises(ValueError, match=r"^grads\[0\] has shape \(5,\)"):
        lrfast.sgd_step(params, grads, lr=0.5)
    np.testing.assert_array_equal(host(params[0]), np.zeros(4, np.float32))


def test_a_read_only_flag_raised_under_the_same_object_is_seen():
    exported = Exported(device(np.ones(4, np.float32)))
    lrfast.clip_grad_value([exported], 0.5)
    exported._readonly = True
    with pytest.raises(ValueError, match=r"^grads\[0\] is read-only"):
        lrfast.clip_grad_value([exported], 0.5)


def _mutations(torch):
    """In-place changes that move a tensor or change what its interface says."""
    def data_view_as_int(t):
        t.data = t.data.view(torch.int32)

    def data_assignment(t):
        t.data = torch.zeros(6)

    return {
        ".data = other": data_assignment,
        ".data = view as int32": data_view_as_int,
        "set_": lambda t: t.set_(torch.zeros(6)),
        "resize_ smaller": lambda t: t.resize_(3),
        "resize_ to (2, 3)": lambda t: t.resize_(2, 3),
        "unsqueeze_": lambda t: t.unsqueeze_(0),
        "as_strided_": lambda t: t.as_strided_((3,), (2,)),
        "storage freed": lambda t: t.untyped_storage().resize_(0),
    }


def test_torch_prints_see_what_moves_a_tensor():
    # The fast path takes a torch tensor's print at every call; CPU tensors
    # here, whose prints are made the same way.
    torch = pytest.importorskip("torch")
    for name, mutate in _mutations(torch).items():
        t = torch.zeros(6)
        before = layout._print(t)
        mutate(t)
        assert layout._print(t) != before, name
    t = torch.zeros(6)
    before = layout._print(t)
    t.add_(1).mul_(3)
    t.requires_grad_()
    assert layout._print(t) == before  # values and autograd flags do not matter
    assert layout._print(t.detach()) == before  # another object, the same tensor
    assert layout._print(torch.nn.Parameter(t.detach())) != before  # another type

    class Sub(torch.Tensor):  # may override the interface: printed from it
        pass

    assert layout._printer(Sub) is layout._interface_print


def test_host_cost_of_a_thousand_tensor_step_seen_before(benchmark, fixed):
    # What the host spends before the launch on an Adam step over 1000
    # tensors seen at the last step (the launch itself is not timed).
    arrays = adam_lists(1000)
    names = ("params", "grads", "exp_avgs", "exp_avg_sqs")
    layout.prepare(arrays, names, False)
    benchmark.extra_info["arrays"] = 4000
    benchmark(layout.prepare, arrays, names, False)


@pytest.mark.skipif(SIMULATED, reason="torch CUDA tensors need a GPU")
def test_torch_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    p = torch.ones(1000, device="cuda")
    g = torch.full((1000,), 2.0, device="cuda")
    lrfast.sgd_step([p], [g], lr=0.25)
    torch.testing.assert_close(p.cpu(), torch.full((1000,), 0.5))
    assert lrfast.global_norm([g]) == pytest.approx(2.0 * 1000 ** 0.5)


@pytest.mark.skipif(SIMULATED, reason="torch CUDA tensors need a GPU")
def test_a_torch_tensor_moved_under_the_same_object_is_checked_again(checks, monkeypatch):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    # torch's caching allocator hands out the addresses of earlier tests'
    # tensors, whose checked layouts the cache would rightly reuse.
    monkeypatch.setattr(layout, "_cache", type(layout._cache)())
    monkeypatch.setattr(layout, "_seen", type(layout._seen)())
    p = torch.ones(1000, device="cuda")
    g = torch.full((1000,), 2.0, device="cuda")
    for _ in range(2):
        lrfast.sgd_step([p], [g], lr=0.25)
    assert len(checks) == 1
    p.data = torch.ones(1000, device="cuda")  # new memory, the same object
    lrfast.sgd_step([p], [g], lr=0.25)
    torch.testing.assert_close(p.cpu(), torch.full((1000,), 0.5))
    g.resize_(500)  # the same memory, another shape
    with pytest.raises(ValueError, match=r"^grads\[0\] has shape \(500,\)"):
        lrfast.sgd_step([p], [g], lr=0.25)
    torch.testing.assert_close(p.cpu(), torch.full((1000,), 0.5))
    lrfast.sgd_step([p], [g.detach().resize_(1000)], lr=0.25)  # a new object, as at first
    torch.testing.assert_close(p.cpu(), torch.zeros(1000))


# -- lrfast.torch on CUDA tensors (a GPU only) -----------------------------------

TORCH_OPTIMIZERS = {"SGD": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                    "Adam": dict(lr=1e-2, amsgrad=True), "AdamW": dict(lr=1e-2),
                    "RMSprop": dict(lr=1e-2, momentum=0.5, centered=True),
                    "Adagrad": dict(lr=0.1, lr_decay=0.01), "Adadelta": dict(weight_decay=0.1)}


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if SIMULATED or not torch.cuda.is_available():
        pytest.skip("torch CUDA tensors need a GPU")
    return torch


@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
def test_the_torch_adapter_on_cuda_matches_torch_optim(name):
    # Including an empty parameter, on a stream of the user's: the steps are
    # queued on torch's current stream, after the gradients written there.
    torch = _torch_cuda()
    import lrfast.torch

    shapes = [(3, 5), (0,), (40_000,), (7,)]
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=torch.float32) for s in shapes]
    ours = [t.cuda().requires_grad_() for t in start]
    theirs = [t.cuda().requires_grad_() for t in start]
    opts = (getattr(lrfast.torch, name)(ours, **TORCH_OPTIMIZERS[name]),
            getattr(torch.optim, name)(theirs, **TORCH_OPTIMIZERS[name], foreach=False))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for step in range(4):
            grads = [torch.randn(s, generator=gen).cuda() for s in shapes]
            for params, opt in zip((ours, theirs), opts):
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                opt.step()
            if step == 1:  # a checkpoint round trip: new plans, new state arrays
                opts[0].load_state_dict(copy.deepcopy(opts[1].state_dict()))
    stream.synchronize()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)
