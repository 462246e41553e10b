"""Adafactor's CUDA path (lrfast.cuda.adafactor_kernels) against
lrfast.reference_adafactor over several steps, its bits across grid sizes,
its checks, and lrfast.torch.Adafactor on CUDA tensors (on a GPU).

Its sums run in another order than the reference's (float64, fixed by the
shapes), which moves a scale's last bits: results are compared within
Adafactor's tolerance of tests/cases.py, 16-bit params within one ulp. In
the simulator (no GPU visible) the sizes stay tiny: it runs every CUDA
thread in Python.
"""

import copy

import numpy as np
import pytest

from cuda_sim import SimulatedDeviceArray, device, host, numba_cuda  # before numba

cuda = numba_cuda()
ml_dtypes = pytest.importorskip("ml_dtypes")

import lrfast  # noqa: E402
import lrfast.cuda  # noqa: E402
from cases import ADAFACTOR, adafactor_states, assert_close, gradients  # noqa: E402
from lrfast import reference_adafactor as reference  # noqa: E402
from lrfast.cuda import launch  # noqa: E402

SIMULATED = launch.SIMULATED
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = (np.float32, np.float64)
# vectors at and around the simulator's pieces (16 elements, 8 threads of 2),
# a 0-d, empty params, matrices of one and of several pieces (pieces of whole
# rows: (10, 3) is three pieces of up to 4 rows, (5, 17) five of one row of
# more columns than threads) and a batch of matrices
SIZES = [(), (0,), (1,), (7,), (8,), (15,), (16,), (17,), (1, 1), (3, 5), (10, 3), (5, 17),
         (2, 3, 4), (3, 0)]
SMALL = [(), (7,), (4, 5), (2, 2, 3)]
# torch's grid, and a d the update never reaches (the default d=1 clips)
GRID = [*ADAFACTOR.grid, dict(d=100.0)]

# a zero row or column of g**2 makes 1 / sqrt(0): the cap at 1 / eps1
pytestmark = pytest.mark.filterwarnings(
    "ignore:(overflow|invalid value|divide by zero) encountered:RuntimeWarning")


def to_device(a):
    """A device copy of `a`, 0-d ones included (cuda_sim's helper makes them 1-d)."""
    if a is None:
        return None
    if np.ndim(a) == 0:  # NumPy makes scalars of 0-d draws: a 0-d array of its own
        a = np.array(a)
        return SimulatedDeviceArray(a) if SIMULATED else cuda.to_device(a)
    return device(a)


def to_host(d):
    return None if d is None else host(d)


def run(on_device, shapes, dtype, hp, steps, grads=None, state_dtype=None):
    """(params, states) after `steps` steps of lrfast (on the device) or the reference."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    states = adafactor_states(shapes, state_dtype or dtype)
    if on_device:
        params = [to_device(p) for p in params]
        states = {k: [to_device(x) for x in v] for k, v in states.items()}
    fn = lrfast.adafactor_step if on_device else reference.adafactor_step
    for step in range(1, steps + 1):
        g = grads(step) if grads else gradients(shapes, dtype, step)
        fn(params, [to_device(x) for x in g] if on_device else g, *states.values(), step=step,
           **hp)
    if on_device:
        params = [to_host(p) for p in params]
        states = {k: [to_host(x) for x in v] for k, v in states.items()}
    return params, {k: [x for x in v if x is not None] for k, v in states.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_sizes_match_reference(dtype):
    hp = dict(weight_decay=0.1)
    got, want = (run(on, SIZES, dtype, hp, 3) for on in (True, False))
    assert [p.shape for p in got[0]] == list(SIZES)
    assert_close(ADAFACTOR, dtype, got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("hp", GRID, ids=str)
def test_options_match_reference(hp, dtype):
    got, want = (run(on, SMALL, dtype, hp, 2) for on in (True, False))
    assert_close(ADAFACTOR, dtype, got, want)


def test_the_cap_at_one_over_eps1():
    # A zero row and a zero column of g keep R_i = 0 and C_j = 0: a_i b_j is
    # inf there, and u = g * min(inf, 1 / eps1) = 0, where g * inf would be
    # NaN. Elsewhere a_i b_j grows past 1 / eps1 = 10 as the grads shrink.
    shape = (4, 6)

    def grads(step):
        g = gradients([shape], np.float32, step)[0] * np.float32(10.0 ** -step)
        g[:, 2] = 0
        g[1] = 0
        return [g]

    hp = dict(eps=(0.1, 1e-3))
    got, want = (run(on, [shape], np.float32, hp, 3, grads) for on in (True, False))
    assert_close(ADAFACTOR, np.float32, got, want)


def test_the_same_bits_for_any_grid(monkeypatch):
    results = []
    for blocks in (None, 1, 3):
        if blocks is not None:
            monkeypatch.setattr(launch, "max_blocks", lambda: blocks)
        params, states = run(True, [(10, 3), (17,), (2, 2, 3)], np.float32, {}, 1)
        results.append(np.concatenate([x.ravel() for x in params + sum(states.values(), [])]))
    for other in results[1:]:
        np.testing.assert_array_equal(other.view(np.int32), results[0].view(np.int32))


@pytest.mark.parametrize("param, grad", [(BF16, BF16), (BF16, np.float32),
                                         (np.float16, np.float16)], ids=str)
def test_16bit_params_match_reference(param, grad):
    shapes = [(7,), (4, 5)]

    def grads(step):
        return [g.astype(grad) for g in gradients(shapes, np.float32, step)]

    got, want = (run(on, shapes, param, dict(weight_decay=0.1), 2, grads, np.float32)
                 for on in (True, False))
    for a, b in zip(got[0], want[0], strict=True):
        assert a.dtype == b.dtype == param
        assert np.abs(a.view(np.int16).astype(int) - b.view(np.int16).astype(int)).max() <= 1
    for name in want[1]:
        for a, b in zip(got[1][name], want[1][name], strict=True):
            assert a.dtype == np.float32
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


def test_a_list_costs_five_launches_per_dtype():
    shapes = [(3, 4), (5,)]
    params = [device(np.ones(s, np.float32)) for s in shapes]
    states = {k: [to_device(x) for x in v] for k, v in adafactor_states(shapes, np.float32).items()}
    grads = [device(np.ones(s, np.float32)) for s in shapes]
    before = lrfast.cuda.launch_count()
    lrfast.adafactor_step(params, grads, *states.values(), step=1)
    assert lrfast.cuda.launch_count() - before == 5
    before = lrfast.cuda.launch_count()
    lrfast.adafactor_step(params[1:], grads[1:], *(v[1:] for v in states.values()), step=1)
    assert lrfast.cuda.launch_count() - before == 3  # vectors only: no factors, no norm of u


def _problem(on):
    """Params, grads and states of a matrix and a vector, made by `on`."""
    shapes = [(3, 4), (5,)]
    states = {k: [None if x is None else on(x) for x in v]
              for k, v in adafactor_states(shapes, np.float32).items()}
    return ([on(np.ones(s, np.float32)) for s in shapes],
            [on(np.ones(s, np.float32)) for s in shapes], states)


BAD = {
    "row_vars of the param's shape": lambda s, on: s["row_vars"].__setitem__(
        0, on(np.zeros((3, 4), np.float32))),
    "col_vars float64": lambda s, on: s["col_vars"].__setitem__(0, on(np.zeros((1, 4)))),
    "row_vars None": lambda s, on: s["row_vars"].__setitem__(0, None),
    "variances of a matrix": lambda s, on: s["variances"].__setitem__(
        0, on(np.zeros((3, 4), np.float32))),
    "variances of another shape": lambda s, on: s["variances"].__setitem__(
        1, on(np.zeros(4, np.float32))),
    "len(variances)": lambda s, on: s["variances"].pop(),
    "bfloat16 variances": lambda s, on: s["variances"].__setitem__(
        1, on(np.zeros(5, BF16))),
}


@pytest.mark.parametrize("bad", BAD)
def test_bad_states_give_the_cpu_message_before_any_write(bad):
    messages = []
    for on in (np.copy, device):
        params, grads, states = _problem(on)
        BAD[bad](states, on)
        before = copy.deepcopy([to_host(p) if on is device else p for p in params])
        with pytest.raises((TypeError, ValueError)) as error:
            lrfast.adafactor_step(params, grads, *states.values(), step=1)
        messages.append((error.type, str(error.value)))
        for p, b in zip(params, before):
            np.testing.assert_array_equal(to_host(p) if on is device else p, b)
    assert messages[0] == messages[1]


def test_overlap_and_host_arrays_are_refused():
    params, grads, states = _problem(device)
    states["variances"][1] = params[1]
    with pytest.raises(ValueError, match="overlap"):
        lrfast.adafactor_step(params, grads, *states.values(), step=1)
    params, grads, states = _problem(device)
    states["col_vars"][0] = np.zeros((1, 4), np.float32)
    with pytest.raises(TypeError, match=r"col_vars\[0\] is not a CUDA device array"):
        lrfast.adafactor_step(params, grads, *states.values(), step=1)
    with pytest.raises(ValueError, match="d .* >= 1"):
        lrfast.adafactor_step(params, grads, *states.values(), step=1, d=0.5)
    np.testing.assert_array_equal(host(params[0]), np.ones((3, 4), np.float32))


@pytest.mark.skipif(SIMULATED, reason="torch CUDA tensors need a GPU")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_class_on_cuda_tensors_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    import lrfast.torch

    shapes = [(), (7,), (5, 3), (2, 4, 6), (64, 33)]
    rng = np.random.default_rng(3)
    values = [rng.standard_normal(s).astype(dtype) for s in shapes]
    runs = []
    for cls in (torch.optim.Adafactor, lrfast.torch.Adafactor):
        params = [torch.tensor(v, device="cuda", requires_grad=True) for v in values]
        opt = cls([dict(params=params[:2]), dict(params=params[2:], lr=0.05, weight_decay=0.1)])
        for step in range(1, 4):
            for p, g in zip(params, gradients(shapes, np.dtype(dtype), step)):
                p.grad = torch.tensor(g, device="cuda")
            opt.step()
        runs.append((params, opt))
    rtol = 1e-5 if dtype == "float32" else 1e-12
    (want, theirs), (got, ours) = runs
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.detach().cpu().numpy(), b.detach().cpu().numpy(),
                                   rtol=rtol, atol=rtol)
        for key, state in ours.state[a].items():
            assert state.device == a.device, key
            np.testing.assert_allclose(state.cpu().numpy(), theirs.state[b][key].cpu().numpy(),
                                       rtol=rtol, atol=rtol)
