"""lrfast.torch's fast path (issue 20, item 2): from the second step on, a
step of host params whose groups and params did not change reads the grads
in C++ and skips the slow path's per-param Python. It must give the slow
path's results bit for bit, leave for the slow path whenever anything but the
grads and the hyperparameters' values changed, and refuse what the slow path
refuses before anything is written."""

import copy
import importlib

import pytest

torch = pytest.importorskip("torch")

import lrfast.torch as lt  # noqa: E402

SHAPES = [(7, 3), (17,), (1,), (4, 4, 2)]


def make(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def grads_for(params, step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]


def twins(cls, dtype=torch.float32, **kw):
    """Two equal optimizers over equal params, the second kept on the slow path."""
    out = []
    for _ in range(2):
        params = make(dtype)
        opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], **kw)
        out.append((params, opt))
    out[1][1]._fast_step = lambda: False
    return out


def bits(t):
    return t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t


def assert_same(a, b):
    (pa, oa), (pb, ob) = a, b
    for x, y in zip(pa, pb):
        assert torch.equal(bits(x.detach()), bits(y.detach()))
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    for key in sa:
        for name, value in sa[key].items():
            other = sb[key][name]
            assert (torch.equal(bits(value), bits(other)) if isinstance(value, torch.Tensor)
                    else value == other), name


CLASSES = [
    (lt.SGD, dict(lr=0.01, momentum=0.9, nesterov=True)),
    (lt.Adam, dict(lr=1e-2, amsgrad=True)),
    (lt.AdamW, dict(lr=1e-2, state_dtype="bfloat16")),
    (lt.RMSprop, dict(lr=1e-2, centered=True, momentum=0.5)),
    (lt.Adagrad, dict(lr=0.1, lr_decay=0.01)),
    (lt.Adadelta, dict(lr=1.0, weight_decay=0.1)),
    (lt.Lion, dict(lr=1e-3, weight_decay=0.1)),
]


@pytest.mark.parametrize("cls, kw", CLASSES, ids=[c.__name__ for c, _ in CLASSES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_equals_slow_path_with_a_scheduler(cls, kw, dtype):
    kw = dict(kw, stochastic_rounding=dtype == torch.bfloat16, seed=5)
    pair = twins(cls, dtype, **kw)
    scheds = [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) for _, opt in pair]
    for step in range(6):
        for params, opt in pair:
            for p, g in zip(params, grads_for(params, step)):
                p.grad = g
            opt.step()
        for sched in scheds:
            sched.step()
        assert_same(*pair)
    assert pair[0][1]._fast is not None  # the fast path was taken


def stepped_pair(cls=lt.AdamW, **kw):
    pair = twins(cls, **kw)
    for step in range(2):
        for params, opt in pair:
            for p, g in zip(params, grads_for(params, step)):
                p.grad = g
            opt.step()
    return pair


def step_both(pair, step, change):
    for params, opt in pair:
        for p, g in zip(params, grads_for(params, step)):
            p.grad = g
        change(params)
        opt.step()
    assert_same(*pair)


@pytest.mark.parametrize("change", [
    lambda ps: setattr(ps[0], "grad", ps[0].grad.t().contiguous().t()),  # transposed storage
    lambda ps: setattr(ps[3], "grad", torch._neg_view(-ps[3].grad)),  # a negative-bit view
    lambda ps: setattr(ps[1], "grad", None),  # a param without a grad
    lambda ps: ps[2].data.copy_(ps[2].data + 1),  # values changed in place
    lambda ps: setattr(ps[1], "data", ps[1].data.clone()),  # new storage
], ids=["non-contiguous", "negative-bit", "no-grad", "in-place", "new-storage"])
def test_what_the_fast_path_does_not_take_steps_as_the_slow_path(change):
    pair = stepped_pair()
    step_both(pair, 2, change)
    step_both(pair, 3, lambda ps: None)  # and the fast path again after


@pytest.mark.parametrize("change, error", [
    (lambda ps: setattr(ps[2].grad, "data", torch.zeros(1, dtype=torch.float64)), "dtype"),
    (lambda ps: ps[1].grad.resize_(5), "shape"),
    (lambda ps: setattr(ps[0].grad, "data", torch.zeros(3, 7)), "shape"),
])
def test_a_grad_changed_behind_the_setters_back_is_refused_before_any_write(change, error):
    (params, opt), _ = stepped_pair()
    for p, g in zip(params, grads_for(params, 2)):
        p.grad = g
    change(params)
    before = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=error):
        opt.step()
    for p, q in zip(params, before[0]):
        assert torch.equal(p.detach(), q)
    for key, state in before[1]["state"].items():
        for name, value in state.items():
            assert torch.equal(opt.state_dict()["state"][key][name], value)


def test_a_bad_rate_in_the_second_group_is_refused_before_the_first_group_is_written():
    (params, opt), _ = stepped_pair()
    opt.param_groups[1]["lr"] = -1.0
    for p, g in zip(params, grads_for(params, 2)):
        p.grad = g
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="lr must be"):
        opt.step()
    assert all(torch.equal(p.detach(), q) for p, q in zip(params, before))


def test_after_load_state_dict_the_steps_go_on_as_the_slow_paths():
    pair = stepped_pair(lt.Adam)
    saved = copy.deepcopy(pair[0][1].state_dict())
    for _, opt in pair:
        opt.load_state_dict(copy.deepcopy(saved))  # torch's load keeps the tensors given
    for step in range(2, 5):
        step_both(pair, step, lambda ps: None)


def test_step_hooks_and_the_profiler_see_every_step():
    (params, opt), _ = stepped_pair()
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append("post"))
    opt.step()
    assert seen == ["pre", "post"]
    module = importlib.import_module("torch.optim.optimizer")
    handle = module.register_optimizer_step_post_hook(lambda o, a, k: seen.append("global"))
    try:
        opt.step()
    finally:
        handle.remove()
    assert seen == ["pre", "post"] * 2 + ["global"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert any(e.name == "Optimizer.step#AdamW.step" for e in prof.events())


# The step functions read a CPU torch tensor from its data pointer, shape and
# strides (lrfast/_core's torch_view), refusing what torch's .numpy() refuses.

def test_a_step_function_updates_offset_views_of_torch_tensors_in_place():
    import numpy as np

    import lrfast

    base = torch.arange(40, dtype=torch.float32) / 7
    p, g = base[3:20], torch.ones(17)
    want = p.numpy().copy() - 0.1 * (g.numpy() + 0.01 * p.numpy())
    lrfast.sgd_step(p, g, lr=0.1, weight_decay=0.01)
    np.testing.assert_array_equal(p.numpy(), want)
    assert torch.equal(base[:3], torch.arange(3, dtype=torch.float32) / 7)


@pytest.mark.parametrize("make, error, match", [
    (lambda: torch.zeros(4, 5).t(), ValueError, "contiguous"),
    (lambda: torch._neg_view(torch.zeros(6)), TypeError, "negative"),
    (lambda: torch.zeros(6, dtype=torch.int64), TypeError, "float32"),
    (lambda: torch.zeros(6).to_sparse(), TypeError, "sparse"),
])
def test_torch_tensors_a_step_function_cannot_take_are_refused_by_name(make, error, match):
    import lrfast

    p = torch.zeros(make().shape)
    with pytest.raises(error, match=match):
        lrfast.sgd_step([torch.zeros(3), p], [torch.zeros(3), make()], lr=0.1)
