"""lrfast.torch's and lrfast.optim's NAdam, RAdam and Adamax against
torch.optim's (single-tensor path): several steps, float32 and float64,
shapes 0-d to 3-d, two param groups, and state dicts that load both ways."""

import copy

import numpy as np
import pytest

import lrfast.optim

torch = pytest.importorskip("torch")
import lrfast.torch  # noqa: E402

SHAPES = [(), (7,), (3, 5), (2, 3, 4)]
STEPS = 8
# every option that changes the maths, the second group with other betas and rate
OPTIONS = [
    ("NAdam", dict(weight_decay=0.1)),
    ("NAdam", dict(weight_decay=0.1, decoupled_weight_decay=True, momentum_decay=1e-2,
                   maximize=True)),
    ("RAdam", dict(weight_decay=0.1)),
    ("RAdam", dict(weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("Adamax", dict(weight_decay=0.1, maximize=True)),
]
IDS = [f"{name}-{i}" for i, (name, _) in enumerate(OPTIONS)]
# torch's lerp takes its other form at weight 0.5 (betas[0] = 0.5): a few ulps
TOL = {torch.float32: (1e-6, 1e-7), torch.float64: (1e-12, 1e-14)}


def groups(params):
    return [{"params": params[:2], "lr": 1e-2},
            {"params": params[2:], "lr": 3e-3, "betas": (0.5, 0.9), "eps": 1e-3}]


def grads(dtype, step):
    rng = np.random.default_rng(step)
    return [torch.tensor(rng.standard_normal(s) + 0.1, dtype=dtype) for s in SHAPES]


def assert_close(got, want, dtype):
    rtol, atol = TOL[dtype]
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=rtol,
                                   atol=atol, err_msg=f"params[{i}]")


def pair(name, kw, dtype):
    """Equal params under torch.optim's class and lrfast.torch's."""
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(s, dtype=dtype, generator=gen, requires_grad=True) for s in SHAPES]
    b = [t.detach().clone().requires_grad_() for t in a]
    return (a, getattr(torch.optim, name)(groups(a), foreach=False, **kw),
            b, getattr(lrfast.torch, name)(groups(b), **kw))


def step_both(a, ref, b, ours, dtype, step):
    for x, y, g in zip(a, b, grads(dtype, step)):
        x.grad, y.grad = g.clone(), g.clone()
    ref.step()
    ours.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("name", "kw"), OPTIONS, ids=IDS)
def test_torch_class_matches_torch_optim(name, kw, dtype):
    a, ref, b, ours = pair(name, kw, dtype)
    for step in range(1, STEPS + 1):
        step_both(a, ref, b, ours, dtype, step)
    assert_close(b, a, dtype)
    for x, y in zip(a, b):
        assert ref.state[x].keys() == ours.state[y].keys()
        for key, value in ref.state[x].items():
            np.testing.assert_allclose(ours.state[y][key].numpy(), value.numpy(),
                                       rtol=TOL[dtype][0], atol=TOL[dtype][1], err_msg=key)
            assert ours.state[y][key].dtype == value.dtype, key  # mu_product: float32, as torch


@pytest.mark.parametrize(("name", "kw"), OPTIONS[::2], ids=IDS[::2])
def test_state_dicts_load_both_ways(name, kw):
    """Midway, torch's state dict loads into lrfast's class and lrfast's into
    torch's; both pairs then go on as one."""
    dtype = torch.float64
    a, ref, b, ours = pair(name, kw, dtype)
    for step in range(1, 4):
        step_both(a, ref, b, ours, dtype, step)
    ours_sd, ref_sd = copy.deepcopy(ours.state_dict()), copy.deepcopy(ref.state_dict())
    # cross over: torch's params go on under lrfast, lrfast's under torch
    ref2 = getattr(torch.optim, name)(groups(b), foreach=False, **kw)
    ref2.load_state_dict(ours_sd)
    ours2 = getattr(lrfast.torch, name)(groups(a), **kw)
    ours2.load_state_dict(ref_sd)
    for step in range(4, STEPS + 1):
        step_both(a, ours2, b, ref2, dtype, step)
    # torch.optim casts a loaded state to its param's dtype, NAdam's float32
    # mu_product too, lrfast keeps the dtypes it loads: b, under torch from
    # step 4, is torch reloading its own state dict; a, under lrfast, is torch
    # going straight through
    assert_close(a, torch_run(name, kw, dtype, reload_at=None), dtype)
    assert_close(b, torch_run(name, kw, dtype, reload_at=3), dtype)


def torch_run(name, kw, dtype, reload_at):
    params, opt, _, _ = pair(name, kw, dtype)
    for step in range(1, STEPS + 1):
        for x, g in zip(params, grads(dtype, step)):
            x.grad = g
        opt.step()
        if step == reload_at:
            sd = copy.deepcopy(opt.state_dict())
            opt = getattr(torch.optim, name)(groups(params), foreach=False, **kw)
            opt.load_state_dict(sd)
    return params


@pytest.mark.parametrize(("name", "kw"), OPTIONS[::2], ids=IDS[::2])
def test_numpy_class_matches_torch_optim(name, kw):
    dtype = torch.float64
    a, ref, _, _ = pair(name, kw, dtype)
    params = [x.detach().numpy().copy() for x in a]
    ours = getattr(lrfast.optim, name)(groups(params), **kw)
    for step in range(1, STEPS + 1):
        for x, g in zip(a, grads(dtype, step)):
            x.grad = g
        ref.step()
        ours.step([g.numpy() for g in grads(dtype, step)])
    assert_close([torch.from_numpy(p) for p in params], a, dtype)
    if name == "NAdam":  # the group's product, torch's per param
        assert ours.param_groups[1]["mu_product"] == ref.state[a[2]]["mu_product"].item()


def test_nadam_splits_a_call_whose_params_hold_different_products():
    """A state dict may give params of one step count different mu_products:
    each param then steps with its own, as torch's loop does."""
    dtype = torch.float64
    a, ref, b, ours = pair("NAdam", {}, dtype)
    step_both(a, ref, b, ours, dtype, 1)
    for opt, params in ((ref, a), (ours, b)):
        opt.state[params[1]]["mu_product"].mul_(0.5)
    for step in range(2, 4):
        step_both(a, ref, b, ours, dtype, step)
    assert_close(b, a, dtype)


def test_bad_mu_product_raises_before_writing():
    a, _, b, ours = pair("NAdam", {}, torch.float32)
    before = [p.detach().clone() for p in b]
    for p in b:
        p.grad = torch.ones_like(p)
    ours.state[b[0]]["mu_product"] = torch.tensor([1.0])
    with pytest.raises(ValueError, match="mu_product"):
        ours.step()
    for p, q in zip(b, before):
        assert torch.equal(p.detach(), q)
