"""lrfast.optim's Lion, ScheduleFreeSGD, ScheduleFreeAdamW and Prodigy
against lion-pytorch, schedulefree and prodigyopt (each test skipped when its
package is absent): params and group keys (Prodigy's d) step by step,
through eval()/train() switches, over two param groups; checkpoints; bad
arguments; low precision."""

from __future__ import annotations

import numpy as np
import pytest

import lrfast.optim
from lr_free_classes import (
    CASES, GROUP_KEYS, IDS, LOWP_SHAPES, LOWP_STATES, LOWP_STEPS, SR_LR, SR_SIZE, SR_START,
    SR_STEPS, STEPS, Z_CASES, Z_LR, Z_SIZE, Z_STEPS, assert_first_step_moved_by_the_update,
    assert_low_precision_stays_close, assert_z_follows_in_expectation,
    assert_z_moved_by_every_update, close, close_keys, gradients, initial_params, narrow,
    side_by_side, widened, z_start,
)
from lrfast.precision import Q4State, Q8State

torch = pytest.importorskip("torch")


def make(case, params):
    opt = getattr(lrfast.optim, case.name)(case.groups(params), **case.kw)
    if case.schedule_free:
        opt.train()
    return opt


def reference(case, arrays):
    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    ref = case.reference()(case.groups(tensors), **case.kw)
    if case.schedule_free:
        ref.train()
    return ref, tensors


def assert_close_to(opt, params, ref, theirs, case, dtype, what):
    for j, (p, q) in enumerate(zip(params, theirs)):
        close(p, q.detach().numpy(), dtype, f"{what} param {j}")
    for i, (mine, want) in enumerate(zip(opt.param_groups, ref.param_groups)):
        close_keys(mine, want, GROUP_KEYS.get(case.name, ()), dtype, f"{what} group {i}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_the_reference_package_step_by_step(case, dtype):
    params = initial_params(dtype)
    ref, theirs = reference(case, params)
    opt = make(case, params)

    def step_both(step):
        for q, g in zip(theirs, gradients([q.detach().numpy() for q in theirs], step)):
            q.grad = torch.tensor(g)
        ref.step()
        opt.step(gradients(params, step))

    side_by_side(case, (opt, ref), range(STEPS), step_both,
                 lambda what: assert_close_to(opt, params, ref, theirs, case, dtype, what))
    if case.name == "Prodigy":  # d grew, is shared, and is what .d says
        assert opt.d == opt.param_groups[1]["d"] > case.kw.get("d0", 1e-6)
        close_keys({"d": opt.d}, ref.param_groups[0], ["d"], dtype, "d")


@pytest.mark.parametrize("how", ["state_dict", "file"])
@pytest.mark.parametrize("eval_mode", [False, True], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_checkpoints_mid_training_continue_bit_identically(case, eval_mode, how, tmp_path):
    params = initial_params(np.float32)
    opt = make(case, params)
    for step in range(3):
        opt.step(gradients(params, step))
    if case.schedule_free and eval_mode:
        opt.eval()
    copies = [p.copy() for p in params]
    again = getattr(lrfast.optim, case.name)(case.groups(copies), **case.kw)
    if how == "file":
        opt.save(tmp_path / "ckpt.npz")
        again.load(tmp_path / "ckpt.npz")
    else:
        again.load_state_dict(opt.state_dict())
    if case.schedule_free:
        assert again.param_groups[1]["train_mode"] is not eval_mode
        opt.train()
        again.train()
    for step in range(3, 6):
        opt.step(gradients(params, step))
        again.step(gradients(copies, step))
    for p, q in zip(params, copies):
        np.testing.assert_array_equal(p, q)
    for mine, want in zip(again.param_groups, opt.param_groups):
        assert {k: v for k, v in mine.items() if k != "params"} == \
            {k: v for k, v in want.items() if k != "params"}


BAD = [
    ("Lion", dict(lr=-1e-3), "lr"),
    ("Lion", dict(lr=0.0), "lr"),
    ("Lion", dict(betas=(1.0, 0.99)), r"betas\[0\]"),
    ("ScheduleFreeSGD", dict(lr=-1.0), "lr"),
    ("ScheduleFreeSGD", dict(momentum=1.0), "momentum"),
    ("ScheduleFreeSGD", dict(warmup_steps=-1), "warmup_steps"),
    ("ScheduleFreeAdamW", dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    ("ScheduleFreeAdamW", dict(warmup_steps=1.5), "warmup_steps"),
    ("Prodigy", dict(lr=-1.0), "lr"),
    ("Prodigy", dict(slice_p=0), "slice_p"),
    ("Prodigy", dict(betas=(-0.1, 0.999)), r"betas\[0\]"),
    ("Prodigy", dict(d0=0.0), "d0"),
]


@pytest.mark.parametrize(("name", "kw", "match"), BAD)
def test_bad_arguments_raise_clear_errors(name, kw, match):
    with pytest.raises(ValueError, match=match):
        getattr(lrfast.optim, name)(initial_params(np.float32), **kw)


# set later, Lion's lr=0 is taken (as lion-pytorch's step takes it)
SET_LATER = [b for b in BAD if b[:2] != ("Lion", dict(lr=0.0))]


@pytest.mark.parametrize(("name", "kw", "match"), SET_LATER)
def test_bad_arguments_set_later_write_nothing(name, kw, match):
    params = initial_params(np.float32)
    opt = getattr(lrfast.optim, name)([{"params": params[:2]}, {"params": params[2:]}])
    if name.startswith("ScheduleFree"):
        opt.train()
    opt.step(gradients(params, 0))
    before = [p.copy() for p in params]
    sd = opt.state_dict()
    opt.param_groups[1].update(kw)
    with pytest.raises(ValueError, match=f"{match}|shares"):  # Prodigy: group 0 differs
        opt.step(gradients(params, 1))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    for i, state in enumerate(sd["state"]):
        for name, arrays in state.items():
            for a, b in zip(opt.state[i][name], arrays):
                np.testing.assert_array_equal(a, b)
    assert opt.step_count == 1


@pytest.mark.parametrize("name", ["ScheduleFreeSGD", "ScheduleFreeAdamW"])
def test_a_step_in_eval_mode_raises_and_writes_nothing(name):
    params = initial_params(np.float32)
    opt = getattr(lrfast.optim, name)(params, lr=0.01)
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match="eval mode"):
        opt.step(gradients(params, 0))  # groups start in eval mode, as schedulefree's
    assert "zs" not in opt.state[0] and opt.step_count == 0
    opt.train()
    opt.step(gradients(params, 0))
    opt.eval()
    after = [p.copy() for p in params]
    with pytest.raises(ValueError, match="eval mode"):
        opt.step(gradients(params, 1))
    assert opt.param_groups[0]["k"] == opt.step_count == 1
    for p, a, b in zip(params, after, before):
        np.testing.assert_array_equal(p, a)
        assert not np.array_equal(a, b)


def test_prodigy_state_shapes_follow_slice_p_and_p0_copies_the_first_step():
    params = initial_params(np.float64)
    opt = lrfast.optim.Prodigy(params, slice_p=3)
    assert "p0s" not in opt.state[0]  # taken at the first step
    params[0] += 1.0  # e.g. weights loaded after the optimizer was made
    first = [p.copy() for p in params]
    opt.step(gradients(params, 0))
    for p, s, p0 in zip(first, opt.state[0]["ss"], opt.state[0]["p0s"]):
        assert s.shape == p0.shape == (-(-p.size // 3),)
        np.testing.assert_array_equal(p0, p.ravel()[::3])


@pytest.mark.parametrize(("name", "kw", "state_dtype"), LOWP_STATES)
def test_bfloat16_params_with_stochastic_rounding_and_low_precision_states(name, kw,
                                                                         state_dtype):
    bf16 = pytest.importorskip("ml_dtypes").bfloat16

    def train(low_precision):
        dtype = bf16 if low_precision else np.float32
        options = dict(state_dtype=state_dtype, stochastic_rounding=True, seed=3)
        params = [a.astype(dtype) for a in initial_params(np.float32, shapes=LOWP_SHAPES)]
        opt = getattr(lrfast.optim, name)(params, **kw, **(options if low_precision else {}))
        if name.startswith("ScheduleFree"):
            opt.train()
        for step in range(LOWP_STEPS):
            grads = gradients([p.astype(np.float32) for p in params], step)
            opt.step([g.astype(dtype) for g in grads])
        return [p.astype(np.float32) for p in params]

    assert_low_precision_stays_close(train)


# -- issue 19: schedule-free's z keeps the params' precision

@pytest.mark.parametrize(("name", "state_dtype"), Z_CASES)
def test_z_keeps_the_precision_of_float32_params(name, state_dtype):
    params = [z_start()]
    start = params[0].copy()
    opt = getattr(lrfast.optim, name)(params, lr=Z_LR, state_dtype=state_dtype)
    opt.train()
    grads = [np.ones(Z_SIZE, np.float32)]
    opt.step(grads)
    assert_first_step_moved_by_the_update(params[0] - start)
    for _ in range(Z_STEPS - 1):
        opt.step(grads)
    z = opt.state[0]["zs"][0]
    assert isinstance(z, np.ndarray) and z.dtype == np.float32
    assert_z_moved_by_every_update(z - start)
    if name == "ScheduleFreeAdamW":  # the state_dtype is the moments'
        moments = opt.state[0]["exp_avg_sqs"][0]
        assert {"q8": Q8State, "q4": Q4State}.get(state_dtype, np.ndarray) is type(moments)


@pytest.mark.parametrize("name", ["ScheduleFreeSGD", "ScheduleFreeAdamW"])
def test_a_bfloat16_z_follows_the_exact_trajectory_in_expectation(name):
    bf16 = pytest.importorskip("ml_dtypes").bfloat16

    def z_after(dtype, **options):
        params = [np.full(SR_SIZE, SR_START, dtype)]
        opt = getattr(lrfast.optim, name)(params, lr=SR_LR, **options)
        opt.train()
        for _ in range(SR_STEPS):
            opt.step([np.ones(SR_SIZE, dtype)])
        return opt.state[0]["zs"][0].astype(np.float64)

    assert_z_follows_in_expectation(z_after(bf16, stochastic_rounding=True, seed=1),
                                    z_after(bf16), z_after(np.float64))


def schedulefree_adamw(params, state_dtype):
    opt = lrfast.optim.ScheduleFreeAdamW(params, lr=1e-3, state_dtype=state_dtype)
    opt.train()
    return opt


def trained(state_dtype):
    params = [z_start()]
    opt = schedulefree_adamw(params, state_dtype)
    for step in range(2):
        opt.step(gradients(params, step))
    return opt


def restored(opt, state_dtype, how, tmp_path):
    """A ScheduleFreeAdamW on copies of ``opt``'s params, loaded from its
    state dict or its file."""
    again = schedulefree_adamw([p.copy() for p in opt.param_groups[0]["params"]], state_dtype)
    if how == "file":
        opt.save(tmp_path / "ckpt.npz")
        again.load(tmp_path / "ckpt.npz")
    else:
        again.load_state_dict(opt.state_dict())
    return again


def assert_continue_alike(opt, again):
    params, copies = opt.param_groups[0]["params"], again.param_groups[0]["params"]
    for step in range(2, 4):
        opt.step(gradients(params, step))
        again.step(gradients(copies, step))
    np.testing.assert_array_equal(params[0], copies[0])
    np.testing.assert_array_equal(again.state[0]["zs"][0], opt.state[0]["zs"][0])


@pytest.mark.parametrize("how", ["state_dict", "file"])
@pytest.mark.parametrize("state_dtype", ["q8", "q4", "bfloat16"])
def test_a_checkpoint_with_a_narrow_z_loads_in_the_params_precision(state_dtype, how, tmp_path):
    # z as lrfast kept it before issue 19, in the state_dtype
    opt = trained(state_dtype)
    old = opt.state[0]["zs"][0] = narrow(opt.state[0]["zs"][0], state_dtype)
    again = restored(opt, state_dtype, how, tmp_path)
    z = again.state[0]["zs"][0]
    assert isinstance(z, np.ndarray) and z.dtype == np.float32
    np.testing.assert_array_equal(z, widened(old))
    opt.state[0]["zs"][0] = widened(old)
    assert_continue_alike(opt, again)


def test_a_checkpoint_z_of_another_dtype_is_still_refused():
    opt = trained("q8")
    sd = opt.state_dict()
    zs = sd["state"][0]["zs"]
    zs[0] = zs[0].astype(np.float16)  # neither a z of now nor of before
    again = schedulefree_adamw([z_start()], "q8")
    with pytest.raises(ValueError, match=r"state\[0\]: zs\[0\] must be an array of shape "
                                         r"\(4096,\) and dtype float32"):
        again.load_state_dict(sd)
    assert "zs" not in again.state[0]  # nothing loaded


@pytest.mark.parametrize("how", ["state_dict", "file"])
@pytest.mark.parametrize("state_dtype", ["q8", "bfloat16"])
def test_checkpoints_with_narrow_moments_continue_bit_identically(state_dtype, how, tmp_path):
    opt = trained(state_dtype)
    assert_continue_alike(opt, restored(opt, state_dtype, how, tmp_path))
