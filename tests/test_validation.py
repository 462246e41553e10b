"""Bad input raises a clear TypeError/ValueError naming the argument and index,
and leaves every array bit-identical (a list is updated all or nothing)."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lrfast

N = 5


def adam_arrays(n=N, size=33, dtype=np.float32):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(size).astype(dtype) for _ in range(n)]
    grads = [rng.standard_normal(size).astype(dtype) for _ in range(n)]
    m = [np.zeros(size, dtype) for _ in range(n)]
    v = [np.zeros(size, dtype) for _ in range(n)]
    return params, grads, m, v


def snapshot(*lists):
    return [[a.copy() for a in lst] for lst in lists]


def assert_unchanged(before, *lists):
    for old, new in zip(before, lists):
        for a, b in zip(old, new):
            np.testing.assert_array_equal(a, b)


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


# (argument index in (params, grads, m, v), corruption, error type, message part)
CORRUPTIONS = {
    "int dtype": (0, lambda a: a.astype(np.int64), TypeError, "params[{i}] has dtype int64"),
    "float16": (2, lambda a: a.astype(np.float16), TypeError, "exp_avgs[{i}] has dtype float16"),
    "grad dtype differs": (1, lambda a: a.astype(np.float64), TypeError,
                           "grads[{i}] has dtype float64 but params[{i}] has float32"),
    "shape": (3, lambda a: np.zeros(a.size + 1, a.dtype), ValueError,
              "exp_avg_sqs[{i}] has shape (34,) but params[{i}] has shape (33,)"),
    "2-d shape": (1, lambda a: np.zeros((3, 11), a.dtype), ValueError, "grads[{i}] has shape"),
    "strided": (0, lambda a: np.repeat(a, 2)[::2], ValueError, "params[{i}] is not C-contiguous"),
    "read-only param": (0, read_only, ValueError, "params[{i}] is read-only"),
    "read-only state": (2, read_only, ValueError, "exp_avgs[{i}] is read-only"),
    "python list": (1, lambda a: a.tolist(), TypeError, "grads[{i}] must be a float32, float64"),
    "byte order": (0, lambda a: a.astype(">f4"), TypeError, "params[{i}] has non-native byte order"),
    "None in list": (3, lambda a: None, TypeError, "exp_avg_sqs[{i}] must be a float32"),
}


@given(kind=st.sampled_from(sorted(CORRUPTIONS)), index=st.integers(0, N - 1))
@settings(max_examples=60, deadline=None)
def test_corrupted_array_is_refused_and_nothing_written(kind, index):
    arrays = list(adam_arrays())
    arg, corrupt, error, message = CORRUPTIONS[kind]
    arrays[arg][index] = corrupt(arrays[arg][index])
    valid = [[a for a in lst if isinstance(a, np.ndarray)] for lst in arrays]
    before = snapshot(*valid)
    with pytest.raises(error, match=re.escape(message.format(i=index))):
        lrfast.adam_step(*arrays, lr=0.1, step=1)
    assert_unchanged(before, *valid)


def test_read_only_grads_are_accepted():
    params, grads, m, v = adam_arrays()
    lrfast.adam_step(params, [read_only(g) for g in grads], m, v, lr=0.1, step=1)


def test_list_length_mismatch():
    params, grads, m, v = adam_arrays()
    before = snapshot(params, m, v)
    with pytest.raises(ValueError, match=r"len\(exp_avg_sqs\) = 4 does not match len\(params\) = 5"):
        lrfast.adam_step(params, grads, m, v[:4], lr=0.1, step=1)
    assert_unchanged(before, params, m, v)


@pytest.mark.parametrize("alias", ["grad is param", "param twice", "state is param",
                                   "state overlaps state", "states share memory across tensors"])
def test_aliasing_is_refused(alias):
    params, grads, m, v = adam_arrays()
    big = np.zeros(66, np.float32)
    if alias == "grad is param":
        grads[2] = params[2]
        expected = r"params\[2\] and grads\[2\] overlap|grads\[2\] and params\[2\] overlap"
    elif alias == "param twice":
        params[4] = params[1]
        expected = r"params\[1\] and params\[4\] overlap|params\[4\] and params\[1\] overlap"
    elif alias == "state is param":
        v[0] = params[0]
        expected = "overlap in memory"
    elif alias == "state overlaps state":
        m[3], v[3] = big[:33], big[20:53]
        expected = r"exp_avgs\[3\] and exp_avg_sqs\[3\] overlap"
    else:
        m[0], m[1] = big[:33], big[32:65]
        expected = r"exp_avgs\[0\] and exp_avgs\[1\] overlap"
    before = snapshot(params, grads, m, v)
    with pytest.raises(ValueError, match=expected):
        lrfast.adam_step(params, grads, m, v, lr=0.1, step=1)
    assert_unchanged(before, params, grads, m, v)


def test_shared_gradient_is_allowed():
    # Gradients are only read, so two tensors may share one.
    params, grads, m, v = adam_arrays(n=2)
    expected = [p.copy() for p in params]
    lrfast.adam_step(expected, [grads[0].copy(), grads[0].copy()], [x.copy() for x in m],
                     [x.copy() for x in v], lr=0.1, step=1)
    lrfast.adam_step(params, [grads[0], grads[0]], m, v, lr=0.1, step=1)
    for got, want in zip(params, expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("fn", "kwargs", "error", "message"), [
    ("sgd_step", dict(lr=0.1, momentum=0.9), ValueError, "momentum_buffers is required"),
    ("sgd_step", dict(lr=0.1, momentum=0.9, dampening=0.5), ValueError, "step is required"),
    ("sgd_step", dict(lr=0.1, momentum=0.9, nesterov=True, dampening=0.1, step=1), ValueError,
     "nesterov requires"),
    ("sgd_step", dict(lr=-0.1), ValueError, "lr must be a finite number >= 0"),
    ("sgd_step", dict(lr=math.nan), ValueError, "lr must not be NaN"),
    ("sgd_step", dict(lr="0.1"), TypeError, "lr must be a real number"),
    ("sgd_step", dict(lr=0.1, weight_decay=-1.0), ValueError, "weight_decay"),
    ("sgd_step", dict(lr=0.1, nesterov=1), TypeError, "nesterov must be a bool"),
    ("adam_step", dict(step=0), ValueError, r"step must be >= 1"),
    ("adam_step", dict(step=1.0), TypeError, "step must be an int"),
    ("adam_step", dict(step=True), TypeError, "step must be an int"),
    ("adam_step", dict(step=1, eps=-1e-8), ValueError, "eps must be a finite number >= 0"),
    ("adam_step", dict(step=1, eps=math.nan), ValueError, "eps must not be NaN"),
    ("adam_step", dict(step=1, betas=(1.0, 0.999)), ValueError, r"betas\[0\] must lie in \[0, 1\)"),
    ("adam_step", dict(step=1, betas=(0.9, -0.1)), ValueError, r"betas\[1\] must lie in \[0, 1\)"),
    ("adam_step", dict(step=1, betas=0.9), TypeError, "betas must be a pair"),
    ("adam_step", dict(step=1, amsgrad=True), ValueError, "max_exp_avg_sqs is required"),
    ("adam_step", dict(step=1, grad_scale=math.inf), ValueError, "grad_scale must be finite"),
    ("rmsprop_step", dict(centered=True), ValueError, "grad_avgs is required"),
    ("rmsprop_step", dict(alpha=1.5), ValueError, r"alpha must lie in \[0, 1\]"),
    ("adagrad_step", dict(step=2, lr_decay=-0.1), ValueError, "lr_decay"),
    ("adadelta_step", dict(rho=-0.5), ValueError, r"rho must lie in \[0, 1\]"),
])
def test_bad_hyperparameters(fn, kwargs, error, message):
    params, grads, m, v = adam_arrays(n=2)
    states = {"sgd_step": (), "adam_step": (m, v), "rmsprop_step": (m,),
              "adagrad_step": (m,), "adadelta_step": (m, v)}[fn]
    before = snapshot(params, m, v)
    with pytest.raises(error, match=message):
        getattr(lrfast, fn)(params, grads, *states, **kwargs)
    assert_unchanged(before, params, m, v)


def test_iterator_is_refused():
    params, grads, m, v = adam_arrays()
    with pytest.raises(TypeError, match="params must be an array or a list/tuple"):
        lrfast.adam_step(iter(params), grads, m, v, lr=0.1, step=1)


def test_buffer_protocol_and_interface_objects_run_without_copy():
    params, grads, m, v = adam_arrays(n=2)
    expected = [p.copy() for p in params]
    lrfast.adam_step(expected, grads, [x.copy() for x in m], [x.copy() for x in v], lr=0.1, step=1)

    class Interface:  # a minimal __array_interface__ exporter over a NumPy array
        def __init__(self, a):
            self.base, self.__array_interface__ = a, a.__array_interface__

    lrfast.adam_step([memoryview(params[0]), Interface(params[1])], grads, m, v, lr=0.1, step=1)
    for got, want in zip(params, expected):
        np.testing.assert_array_equal(got, want)  # updated in place: no copy


def test_torch_cpu_tensors_run_in_place():
    torch = pytest.importorskip("torch")
    p = torch.randn(100, requires_grad=True)
    g, b = torch.randn(100), torch.zeros(100)
    expected = p.detach().numpy() - 0.1 * g.numpy()
    lrfast.sgd_step(p, g, b, lr=0.1, momentum=0.9, step=1)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(b.numpy(), g.numpy())


def test_mixing_host_and_device_arrays_is_refused():
    class FakeDevice:
        __cuda_array_interface__ = {"shape": (33,), "typestr": "<f4", "data": (0, False),
                                    "version": 3}

    params, grads, m, v = adam_arrays()
    before = snapshot(params, m, v)
    grads[3] = FakeDevice()
    with pytest.raises(TypeError, match=r"grads\[3\] is a CUDA device array"):
        lrfast.adam_step(params, grads, m, v, lr=0.1, step=1)
    assert_unchanged(before, params, m, v)


def test_numpy_scalars_are_accepted_as_hyperparameters():
    params, grads, m, v = adam_arrays(n=1)
    vmax = [np.zeros_like(params[0])]
    expected = [p.copy() for p in params]
    lrfast.adam_step(expected, grads, [x.copy() for x in m], [x.copy() for x in v],
                     [x.copy() for x in vmax], lr=0.1, step=3, amsgrad=True, eps=1e-6)
    lrfast.adam_step(params, grads, m, v, vmax, lr=np.float32(0.1), step=np.int64(3),
                     amsgrad=np.bool_(True), eps=np.float64(1e-6))
    np.testing.assert_allclose(params[0], expected[0], rtol=1e-6)


HUGE = 10**400  # a Python int no float can hold


@pytest.mark.parametrize(("fn", "kwargs", "name"), [
    ("sgd_step", dict(lr=HUGE), "lr"),
    ("sgd_step", dict(lr=0.1, weight_decay=HUGE), "weight_decay"),
    ("sgd_step", dict(lr=0.1, grad_scale=HUGE), "grad_scale"),
    ("sgd_step", dict(lr=0.1, momentum=0.9, dampening=0.5, step=HUGE), "step"),
    ("adam_step", dict(step=HUGE), "step"),
    ("adam_step", dict(step=2**63), "step"),
    ("adam_step", dict(step=1, eps=HUGE), "eps"),
    ("adam_step", dict(step=1, betas=(HUGE, 0.9)), r"betas\[0\]"),
    ("adagrad_step", dict(step=HUGE), "step"),
    ("adagrad_step", dict(step=2, lr_decay=HUGE), "lr_decay"),
])
def test_huge_integers_are_refused_by_name(fn, kwargs, name):
    """An int too large for a float is a ValueError naming the argument, not
    an OverflowError from deep inside."""
    params, grads, m, v = adam_arrays(n=2)
    states = {"sgd_step": (m,), "adam_step": (m, v), "adagrad_step": (m,)}[fn]
    before = snapshot(params, m, v)
    with pytest.raises(ValueError, match=name):
        getattr(lrfast, fn)(params, grads, *states, **kwargs)
    assert_unchanged(before, params, m, v)


def test_huge_integers_in_the_classes_and_clipping():
    import lrfast.optim

    params = [np.zeros(3, np.float32)]
    for kwargs, name in [(dict(lr=HUGE), "lr"), (dict(weight_decay=HUGE), "weight_decay"),
                         (dict(grad_scale=HUGE), "grad_scale"),
                         (dict(max_grad_norm=HUGE), "max_grad_norm")]:
        with pytest.raises(ValueError, match=name):
            lrfast.optim.SGD(params, **kwargs)
    opt = lrfast.optim.Adam(params)
    opt.step_count = HUGE
    with pytest.raises(ValueError, match="step"):
        opt.step([np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="max_norm"):
        lrfast.clip_grad_norm(params, HUGE)
    with pytest.raises(ValueError, match="norm_type"):
        lrfast.global_norm(params, HUGE)

    torch = pytest.importorskip("torch")
    import lrfast.torch

    p = torch.nn.Parameter(torch.zeros(3))
    for kwargs, name in [(dict(lr=HUGE), "lr"), (dict(weight_decay=HUGE), "weight_decay")]:
        with pytest.raises(ValueError, match=name):
            lrfast.torch.Adam([p], **kwargs)
    opt = lrfast.torch.Adam([p])
    opt.param_groups[0]["lr"] = HUGE
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="lr"):
        opt.step()
