"""lrfast.reference_lr_free against the reference packages, step by step:
lion-pytorch 0.2.x, schedulefree 1.4.x, prodigyopt 1.1.x (each skipped when
absent). float64 to 1e-9 relative, float32 within a float32 tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrfast import reference_lr_free as ref

torch = pytest.importorskip("torch")

SHAPES = [(1,), (7,), (17,), (300,), (3, 5)]
STEPS = 10
RTOL = {np.float64: 1e-9, np.float32: 2e-5}


def make_params(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def gradients(params, step, maximize=False, seed=1):
    """A noisy quadratic's gradients at ``params`` (so that the adaptive rates
    have something to find; negated for ``maximize``), the same arrays for
    both sides."""
    rng = np.random.default_rng([seed, step])
    sign = -1.0 if maximize else 1.0
    return [(sign * (0.5 * (p - 1.0) + rng.standard_normal(p.shape))).astype(p.dtype)
            for p in params]


def close(ours, theirs, dtype, what):
    ours = np.asarray(ours)
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    theirs = np.broadcast_to(theirs, ours.shape)
    # float32: also relative to the tensor's largest value (float32 sums differ in order)
    atol = 0.0 if dtype == np.float64 else RTOL[dtype] * float(np.abs(theirs).max())
    np.testing.assert_allclose(ours, theirs, rtol=RTOL[dtype], atol=atol, err_msg=what)


def close_scalar(ours, theirs, dtype, what, rtol32=1e-4):
    rtol = 1e-9 if dtype == np.float64 else rtol32
    assert math.isclose(ours, float(theirs), rel_tol=rtol, abs_tol=0.0), (what, ours, theirs)


def tensors_of(params):
    return [torch.tensor(p.copy(), requires_grad=True) for p in params]


def set_grads(tensors, grads, scale=1.0, maximize=False):
    """The package sees what our ``grad_scale``/``maximize`` make of ``grads``."""
    for t, g in zip(tensors, grads):
        tg = torch.tensor(g) * scale
        t.grad = -tg if maximize else tg


DTYPES = [np.float64, np.float32]


# ---------------------------------------------------------------- Lion

LION_ARGS = [
    dict(),
    dict(lr=3e-3, betas=(0.95, 0.98), weight_decay=0.1),
    dict(lr=1e-2, betas=(0.0, 0.5), weight_decay=1.0, maximize=True, grad_scale=0.25),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args", LION_ARGS)
def test_lion(args, dtype):
    lion_pytorch = pytest.importorskip("lion_pytorch")
    params = make_params(dtype)
    exp_avgs = [np.zeros_like(p) for p in params]
    tensors = tensors_of(params)
    pkg = {k: v for k, v in args.items() if k not in ("maximize", "grad_scale")}
    opt = lion_pytorch.Lion(tensors, **pkg)
    for step in range(1, STEPS + 1):
        grads = gradients(params, step, args.get("maximize", False))
        set_grads(tensors, grads, args.get("grad_scale", 1.0), args.get("maximize", False))
        opt.step()
        ref.lion_step(params, grads, exp_avgs, **args)
        for i, t in enumerate(tensors):
            close(params[i], t, dtype, f"param {i} step {step}")
            close(exp_avgs[i], opt.state[t]["exp_avg"], dtype, f"exp_avg {i} step {step}")


def test_lion_single_arrays_and_sign_zero():
    p, g, m = np.array([1.0, 2.0]), np.array([0.0, -1.0]), np.zeros(2)
    ref.lion_step(p, g, m, lr=0.5, weight_decay=0.2)
    np.testing.assert_array_equal(p, [0.9, 1.8 + 0.5])  # sign(0) = 0 moves nothing
    np.testing.assert_allclose(m, [0.0, -0.01])


# ---------------------------------------------------------------- schedule-free

SF_COMMON = [
    dict(),
    dict(warmup_steps=4, weight_decay=0.05),
    dict(warmup_steps=3, r=1.0, weight_lr_power=0.0),
    dict(warmup_steps=20, r=0.5, weight_lr_power=3.0, weight_decay=0.5, maximize=True,
         grad_scale=2.0),
]
SF_SGD = [dict(a, lr=0.1, momentum=m) for a, m in zip(SF_COMMON, (0.9, 0.5, 0.95, 0.8))]
SF_ADAMW = [dict(a, lr=l, betas=b, eps=e) for a, l, b, e in zip(
    SF_COMMON, (0.0025, 0.01, 0.05, 0.02),
    ((0.9, 0.999), (0.5, 0.9), (0.95, 0.99), (0.8, 0.0)), (1e-8, 1e-6, 1e-8, 1e-3))]
SWITCHES = (1, 4, 7)  # eval() then train() before these steps (1: before any z)


def run_schedulefree(kind, args, dtype):
    schedulefree = pytest.importorskip("schedulefree")
    adamw = kind == "adamw"
    params = make_params(dtype)
    tensors = tensors_of(params)
    step_args = {k: v for k, v in args.items()
                 if k not in ("lr", "warmup_steps", "r", "weight_lr_power")}
    pkg = {k: v for k, v in args.items() if k not in ("maximize", "grad_scale")}
    opt = (schedulefree.AdamWScheduleFree if adamw else schedulefree.SGDScheduleFree)(
        tensors, **pkg)
    beta1 = args["betas"][0] if adamw else args["momentum"]
    scalars = ref.ScheduleFreeScalars(args["lr"], warmup_steps=args.get("warmup_steps", 0),
                                      r=args.get("r", 0.0),
                                      weight_lr_power=args.get("weight_lr_power", 2.0))
    zs, vs = None, [np.zeros_like(p) for p in params]

    def check(what):
        for i, t in enumerate(tensors):
            close(params[i], t, dtype, f"param {i} {what}")
            if zs is not None:
                close(zs[i], opt.state[t]["z"], dtype, f"z {i} {what}")
            if adamw and zs is not None:
                close(vs[i], opt.state[t]["exp_avg_sq"], dtype, f"exp_avg_sq {i} {what}")

    opt.train()
    for step in range(1, STEPS + 1):
        if step in SWITCHES:
            opt.eval()
            if zs is not None:
                ref.schedulefree_to_eval(params, zs, beta1=beta1)
            check(f"eval before step {step}")
            opt.train()
            if zs is not None:
                ref.schedulefree_to_train(params, zs, beta1=beta1)
            check(f"train before step {step}")
        grads = gradients(params, step, args.get("maximize", False))
        set_grads(tensors, grads, args.get("grad_scale", 1.0), args.get("maximize", False))
        opt.step()
        if zs is None:
            zs = [p.copy() for p in params]
        s = scalars.next()
        group = opt.param_groups[0]
        assert (s.lr, s.step) == (group["scheduled_lr"], group["k"])
        assert (scalars.lr_max, scalars.weight_sum) == (group["lr_max"], group["weight_sum"])
        if adamw:
            ref.schedulefree_adamw_step(params, grads, zs, vs, lr=s.lr, ckp1=s.ckp1,
                                        step=s.step, **step_args)
        else:
            ref.schedulefree_sgd_step(params, grads, zs, lr=s.lr, ckp1=s.ckp1, **step_args)
        check(f"step {step}")
    opt.eval()
    ref.schedulefree_to_eval(params, zs, beta1=beta1)
    check("eval at the end")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args", SF_SGD)
def test_schedulefree_sgd(args, dtype):
    run_schedulefree("sgd", args, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args", SF_ADAMW)
def test_schedulefree_adamw(args, dtype):
    run_schedulefree("adamw", args, dtype)


def test_schedulefree_scalars_first_steps():
    s = ref.ScheduleFreeScalars(1.0, warmup_steps=2)
    assert s.next() == (0.5, 1.0, 1)     # the first point is the whole average
    assert s.next() == (1.0, 0.8, 2)     # weights 0.25, 1
    assert ref.ScheduleFreeScalars(0.0).next().ckp1 == 0.0  # 0 / 0


# ---------------------------------------------------------------- Prodigy

PRODIGY_ARGS = [
    dict(),
    dict(weight_decay=0.1, decouple=True, use_bias_correction=True, d0=1e-3),
    dict(weight_decay=0.1, decouple=False, safeguard_warmup=True, slice_p=3, d0=1e-3),
    dict(lr=0.5, growth_rate=1.5, d_coef=3.0, beta3=0.9, slice_p=3, d0=1e-4,
         use_bias_correction=True, maximize=True, grad_scale=0.5),
    dict(betas=(0.0, 0.99), weight_decay=0.05, decouple=False, eps=1e-6, d0=1e-3),
    dict(betas=(0.0, 0.9), weight_decay=0.2, growth_rate=1.02, safeguard_warmup=True,
         d0=1e-3, zero_first=True),
]
PRODIGY_SHAPES = SHAPES + [(4,)]  # the last param starts all zeros: prodigyopt's 0-d p0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args", PRODIGY_ARGS)
def test_prodigy(args, dtype):
    prodigyopt = pytest.importorskip("prodigyopt")
    args = dict(args)
    zero_first = args.pop("zero_first", False)
    hp = dict(lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0.0,
              decouple=True, use_bias_correction=False, safeguard_warmup=False, d0=1e-6,
              d_coef=1.0, growth_rate=math.inf, slice_p=1, maximize=False, grad_scale=1.0)
    hp.update(args)
    params = make_params(dtype, PRODIGY_SHAPES)
    params[-1][...] = 0
    tensors = tensors_of(params)
    opt = prodigyopt.Prodigy(tensors, **{k: v for k, v in hp.items()
                                         if k not in ("maximize", "grad_scale")})
    beta1 = hp["betas"][0]
    slice_p, d0 = hp["slice_p"], hp["d0"]
    d = d_max = d0
    d_numerator, k = 0.0, 0
    ms = [np.zeros_like(p) for p in params] if beta1 > 0 else None
    vs = [np.zeros_like(p) for p in params]
    ss = [np.zeros_like(p.ravel()[::slice_p]) for p in params]
    p0s = [p.ravel()[::slice_p].copy() for p in params]
    common = dict(betas=hp["betas"], weight_decay=hp["weight_decay"], decouple=hp["decouple"],
                  maximize=hp["maximize"], grad_scale=hp["grad_scale"])
    moved = 0
    for step in range(1, STEPS + 1):
        grads = gradients(params, step, hp["maximize"])
        if zero_first and step == 1:
            grads = [np.zeros_like(g) for g in grads]
        set_grads(tensors, grads, hp["grad_scale"], hp["maximize"])
        opt.step()
        dlr = ref.prodigy_dlr(d=d, lr=hp["lr"], step=k + 1, betas=hp["betas"],
                              use_bias_correction=hp["use_bias_correction"])
        dot, s_abs = ref.prodigy_reduce(params, grads, ss, p0s, d=d, d0=d0, dlr=dlr,
                                        beta3=hp["beta3"],
                                        safeguard_warmup=hp["safeguard_warmup"],
                                        slice_p=slice_p, **common)
        new = ref.prodigy_d_update(dot, s_abs, d=d, d0=d0, d_max=d_max, d_numerator=d_numerator,
                                   dlr=dlr, betas=hp["betas"], beta3=hp["beta3"],
                                   d_coef=hp["d_coef"], growth_rate=hp["growth_rate"])
        if new is None:  # prodigyopt's early return: the moments only
            assert zero_first and step == 1
            ref.prodigy_update(params, grads, ms, vs, d=d, d_new=d, dlr=0.0, eps=hp["eps"],
                               **common)
        else:
            ref.prodigy_update(params, grads, ms, vs, d=d, d_new=new.d, dlr=dlr, eps=hp["eps"],
                               **common)
            d, d_max, d_numerator, k = new.d, new.d_max, new.d_numerator, k + 1
        group = opt.param_groups[0]
        assert group["k"] == k
        for name, ours in (("d", d), ("d_max", d_max), ("d_numerator", d_numerator)):
            close_scalar(ours, group[name], dtype, f"{name} step {step}")
        if new is not None:
            close_scalar(new.d_hat, group["d_hat"], dtype, f"d_hat step {step}")
            close_scalar(new.d_denom, group["d_denom"], dtype, f"d_denom step {step}")
        moved += d != d0
        for i, t in enumerate(tensors):
            state = opt.state[t]
            close(params[i], t, dtype, f"param {i} step {step}")
            close(vs[i], state["exp_avg_sq"], dtype, f"exp_avg_sq {i} step {step}")
            close(ss[i], state["s"], dtype, f"s {i} step {step}")
            close(p0s[i], state["p0"], dtype, f"p0 {i} step {step}")
            if ms is not None:
                close(ms[i], state["exp_avg"], dtype, f"exp_avg {i} step {step}")
    assert moved  # d left d0: the estimate is exercised
