"""lrfast.torch's Lion, ScheduleFreeSGD, ScheduleFreeAdamW and Prodigy
against lion-pytorch, schedulefree and prodigyopt (each test skipped when its
package is absent): params, states and group keys (Prodigy's d) step by step,
through eval()/train() switches, over two param groups; state dicts both
ways and through torch.save; bad arguments; low precision."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lrfast.torch  # noqa: E402
from lr_free_classes import (  # noqa: E402
    CASES, GROUP_KEYS, IDS, LOWP_SHAPES, LOWP_STATES, LOWP_STEPS, SR_LR, SR_SIZE, SR_START,
    SR_STEPS, STEPS, Z_CASES, Z_LR, Z_SIZE, Z_STEPS, assert_first_step_moved_by_the_update,
    assert_low_precision_stays_close, assert_z_follows_in_expectation,
    assert_z_moved_by_every_update, close, close_keys, gradients, initial_params, narrow,
    side_by_side, widened, z_start,
)
from lrfast.precision import Q4State  # noqa: E402


def tensors(arrays):
    return [torch.tensor(a, requires_grad=True) for a in arrays]


def set_grads(params, step):
    for p, g in zip(params, gradients([p.detach().numpy() for p in params], step)):
        p.grad = torch.tensor(g)


def make(case, params, ours=True):
    cls = getattr(lrfast.torch, case.name) if ours else case.reference()
    opt = cls(case.groups(params), **case.kw)
    if case.schedule_free:
        opt.train()
    return opt


def assert_close_states(opt, ref, params, theirs, dtype, what):
    for j, (p, q) in enumerate(zip(params, theirs)):
        mine, want = opt.state[p], ref.state[q]
        assert set(mine) == set(want), (what, j)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                close(mine[key].numpy(), value.numpy(), dtype, f"{what} {key}[{j}]")
            else:
                assert int(mine[key]) == value, (what, key, j)


def assert_close_to(opt, ref, params, theirs, case, dtype, what):
    close_all(params, theirs, dtype, what)
    for i, (mine, want) in enumerate(zip(opt.param_groups, ref.param_groups)):
        close_keys(mine, want, GROUP_KEYS.get(case.name, ()), dtype, f"{what} group {i}")
    assert_close_states(opt, ref, params, theirs, dtype, what)


def close_all(params, theirs, dtype, what):
    for j, (p, q) in enumerate(zip(params, theirs)):
        close(p.detach().numpy(), q.detach().numpy(), dtype, f"{what} param {j}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_the_reference_package_step_by_step(case, dtype):
    init = initial_params(dtype)
    params, theirs = tensors(init), tensors(init)
    ref, opt = make(case, theirs, ours=False), make(case, params)
    side_by_side(case, (opt, ref), range(STEPS), lambda step: step_all([opt, ref], step),
                 lambda what: assert_close_to(opt, ref, params, theirs, case, dtype, what))


def step_all(optimizers, step):
    for opt in optimizers:
        for group in opt.param_groups:
            set_grads(group["params"], step)
        opt.step()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dicts_load_both_ways_with_the_reference(case):
    """The reference's state dict loads into ours and ours into the
    reference, mid-training; each continues as the reference does."""
    init = initial_params(np.float64)
    theirs = tensors(init)
    ref = make(case, theirs, ours=False)
    for step in range(3):
        step_all([ref], step)
    params, copies = (tensors([q.detach().numpy() for q in theirs]) for _ in range(2))
    opt, back = make(case, params), make(case, copies, ours=False)
    # copies of the state dicts, as torch.load makes (load_state_dict may keep the tensors)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    back.load_state_dict(copy.deepcopy(opt.state_dict()))

    def compare(what):
        assert_close_to(opt, ref, params, theirs, case, np.float64, what)
        close_all(copies, theirs, np.float64, f"{what}, the reference loaded from ours")

    side_by_side(case, (opt, ref, back), range(3, 6), lambda step: step_all([opt, ref, back], step),
                 compare)


def test_prodigyopts_zero_p0_of_an_all_zero_param_loads():
    init = initial_params(np.float64)
    init[1][:] = 0.0  # prodigyopt keeps a 0-d p0 for it
    theirs = tensors(init)
    case = next(case for case in CASES if case.name == "Prodigy")
    ref = make(case, theirs, ours=False)
    step_all([ref], 0)
    assert ref.state[theirs[1]]["p0"].dim() == 0
    params = tensors([q.detach().numpy() for q in theirs])
    opt = make(case, params)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    for step in range(1, 4):
        step_all([opt, ref], step)
    close_all(params, theirs, np.float64, "params")
    assert opt.state[params[1]]["p0"].shape == (7,)


@pytest.mark.parametrize("eval_mode", [False, True], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES[::3], ids=IDS[::3])
def test_torch_save_round_trip_continues_bit_identically(case, eval_mode):
    params = tensors(initial_params(np.float32))
    opt = make(case, params)
    for step in range(3):
        set_grads(params, step)
        opt.step()
    if case.schedule_free and eval_mode:
        opt.eval()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    copies = tensors([p.detach().numpy() for p in params])
    again = getattr(lrfast.torch, case.name)(case.groups(copies), **case.kw)
    buffer.seek(0)
    again.load_state_dict(torch.load(buffer))
    if case.schedule_free:
        assert again.param_groups[0]["train_mode"] is not eval_mode
        opt.train()
        again.train()
    for step in range(3, 6):
        for ps in (params, copies):
            set_grads(ps, step)
        opt.step()
        again.step()
    for p, q in zip(params, copies):
        assert torch.equal(p, q)


def test_prodigy_d_is_shared_and_grows():
    params = tensors(initial_params(np.float64))
    opt = lrfast.torch.Prodigy([{"params": params[:2]}, {"params": params[2:]}])
    for step in range(10):
        set_grads(params, step)
        opt.step()
    assert opt.param_groups[0]["d"] == opt.param_groups[1]["d"] > 1e-6


def test_lion_steps_at_rate_0_as_lion_pytorch():
    """A rate set to 0 later (a schedule, or torch.distributed.checkpoint's
    get/set_optimizer_state_dict, which step a fresh optimizer at lr 0 to
    make its states): the params stay, the moments move."""
    lion_pytorch = pytest.importorskip("lion_pytorch")
    init = initial_params(np.float64)
    params, theirs = tensors(init), tensors(init)
    opt = lrfast.torch.Lion(params, lr=1e-2, weight_decay=0.5)
    ref = lion_pytorch.Lion(theirs, lr=1e-2, weight_decay=0.5)
    for step, lr in enumerate((1e-2, 0.0)):
        for o, ps in ((opt, params), (ref, theirs)):
            o.param_groups[0]["lr"] = lr
            set_grads(ps, step)
            o.step()
    assert_close_states(opt, ref, params, theirs, np.float64, "lr 0")
    close_all(params, theirs, np.float64, "lr 0")


def test_train_before_the_first_step_makes_no_states():
    """An empty state would tell torch.distributed.checkpoint's
    get/set_optimizer_state_dict that the optimizer has stepped, and they
    would not make its states before loading them."""
    opt = lrfast.torch.ScheduleFreeAdamW(tensors(initial_params(np.float32)))
    opt.train()
    assert not opt.state


def test_lion_ignores_use_triton():
    params = tensors(initial_params(np.float64))
    a = lrfast.torch.Lion(params[:1], lr=1e-2, use_triton=True)
    set_grads(params, 0)
    a.step()


BAD = [
    ("Lion", dict(lr=-1e-3), "lr"),
    ("Lion", dict(lr=0.0), "lr"),
    ("Lion", dict(betas=(1.0, 0.99)), r"betas\[0\]"),
    ("Lion", dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    ("ScheduleFreeSGD", dict(lr=-1.0), "lr"),
    ("ScheduleFreeSGD", dict(momentum=0.0), "momentum"),
    ("ScheduleFreeSGD", dict(momentum=1.0), "momentum"),
    ("ScheduleFreeSGD", dict(warmup_steps=-1), "warmup_steps"),
    ("ScheduleFreeSGD", dict(warmup_steps=2.5), "warmup_steps"),
    ("ScheduleFreeAdamW", dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    ("ScheduleFreeAdamW", dict(betas=(0.0, 0.999)), r"betas\[0\]"),
    ("ScheduleFreeAdamW", dict(r=float("nan")), "r "),
    ("Prodigy", dict(lr=-1.0), "lr"),
    ("Prodigy", dict(slice_p=0), "slice_p"),
    ("Prodigy", dict(betas=(0.9, 1.0)), r"betas\[1\]"),
    ("Prodigy", dict(beta3=1.5), "beta3"),
    ("Prodigy", dict(d0=0.0), "d0"),
    ("Prodigy", dict(eps=0.0), "eps"),
    ("Prodigy", dict(growth_rate=-1.0), "growth_rate"),
    ("Prodigy", dict(fsdp_in_use=True), "fsdp_in_use"),
]


@pytest.mark.parametrize(("name", "kw", "match"), BAD)
def test_bad_arguments_raise_clear_errors(name, kw, match):
    params = tensors(initial_params(np.float32))
    with pytest.raises(ValueError, match=match):
        getattr(lrfast.torch, name)(params, **kw)


# set later, Lion's lr=0 is taken (as lion-pytorch's step takes it), fsdp_in_use is not read
SET_LATER = [b for b in BAD if b[:2] != ("Lion", dict(lr=0.0)) and "fsdp_in_use" not in b[1]]


@pytest.mark.parametrize(("name", "kw", "match"), SET_LATER)
def test_bad_arguments_set_later_write_nothing(name, kw, match):
    params = tensors(initial_params(np.float32))
    opt = getattr(lrfast.torch, name)([{"params": params[:2]}, {"params": params[2:]}])
    if name.startswith("ScheduleFree"):
        opt.train()
    set_grads(params, 0)
    opt.step()
    before = [p.detach().clone() for p in params]
    states = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in params}
    opt.param_groups[1].update(kw)
    set_grads(params, 1)
    with pytest.raises(ValueError, match=f"{match}|shares"):  # Prodigy: group 0 differs
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p, b)
        for key, value in states[p].items():
            assert torch.equal(opt.state[p][key], value)


@pytest.mark.parametrize("name", ["ScheduleFreeSGD", "ScheduleFreeAdamW"])
def test_a_step_in_eval_mode_raises_and_writes_nothing(name):
    params = tensors(initial_params(np.float32))
    opt = getattr(lrfast.torch, name)(params, lr=0.01)
    set_grads(params, 0)
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="eval mode"):
        opt.step()  # groups start in eval mode, as schedulefree's
    opt.train()
    opt.step()
    opt.eval()
    after = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="eval mode"):
        opt.step()
    assert opt.param_groups[0]["k"] == 1
    for p, a, b in zip(params, after, before):
        assert torch.equal(p, a) and not torch.equal(a, b)


def test_prodigy_refuses_groups_that_disagree_on_shared_keys_or_rates():
    params = tensors(initial_params(np.float32))
    set_grads(params, 0)
    opt = lrfast.torch.Prodigy([{"params": params[:2]}, {"params": params[2:], "d0": 1e-3}])
    with pytest.raises(ValueError, match="shares d0"):
        opt.step()
    opt = lrfast.torch.Prodigy([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}])
    with pytest.raises(ValueError, match="largest rate"):
        opt.step()


@pytest.mark.parametrize(("name", "kw", "state_dtype"), LOWP_STATES)
def test_bfloat16_params_with_stochastic_rounding_and_low_precision_states(name, kw,
                                                                         state_dtype):
    def train(low_precision):
        dtype = torch.bfloat16 if low_precision else torch.float32
        options = dict(state_dtype=state_dtype, stochastic_rounding=True, seed=3)
        params = [torch.tensor(a, dtype=dtype, requires_grad=True)
                  for a in initial_params(np.float32, shapes=LOWP_SHAPES)]
        opt = getattr(lrfast.torch, name)(params, **kw, **(options if low_precision else {}))
        if name.startswith("ScheduleFree"):
            opt.train()
        for step in range(LOWP_STEPS):
            for p, g in zip(params, gradients([p.detach().float().numpy() for p in params],
                                              step)):
                p.grad = torch.tensor(g, dtype=dtype)
            opt.step()
        return [p.detach().float().numpy() for p in params]

    assert_low_precision_stays_close(train)


# -- issue 19: schedule-free's z keeps the params' precision

@pytest.mark.parametrize(("name", "state_dtype"), Z_CASES)
def test_z_keeps_the_precision_of_float32_params(name, state_dtype):
    start = z_start()
    p = torch.tensor(start, requires_grad=True)
    opt = getattr(lrfast.torch, name)([p], lr=Z_LR, state_dtype=state_dtype)
    opt.train()
    p.grad = torch.ones(Z_SIZE)
    opt.step()
    assert_first_step_moved_by_the_update(p.detach().numpy() - start)
    for _ in range(Z_STEPS - 1):
        opt.step()
    z = opt.state[p]["z"]
    assert z.dtype == torch.float32 and "z_codes" not in opt.state[p]
    assert_z_moved_by_every_update(z.numpy() - start)
    if name == "ScheduleFreeAdamW":  # the state_dtype is the moments'
        low_bit = "exp_avg_sq_codes" in opt.state[p]
        assert low_bit == (state_dtype != "bfloat16")


@pytest.mark.parametrize("name", ["ScheduleFreeSGD", "ScheduleFreeAdamW"])
def test_a_bfloat16_z_follows_the_exact_trajectory_in_expectation(name):
    def z_after(dtype, **options):
        p = torch.full((SR_SIZE,), SR_START, dtype=dtype, requires_grad=True)
        opt = getattr(lrfast.torch, name)([p], lr=SR_LR, **options)
        opt.train()
        p.grad = torch.ones_like(p)
        for _ in range(SR_STEPS):
            opt.step()
        return opt.state[p]["z"].double().numpy()

    assert_z_follows_in_expectation(z_after(torch.bfloat16, stochastic_rounding=True, seed=1),
                                    z_after(torch.bfloat16), z_after(torch.float64))


def old_z_entries(z: torch.Tensor, kind: str) -> dict:
    """A float32 z as lrfast kept it in a state_dtype of ``kind`` before issue 19."""
    old = narrow(z.numpy(), kind)
    if kind == "bfloat16":
        return {"z": z.to(torch.bfloat16)}
    entries = {"z_codes": torch.from_numpy(old.codes), "z_absmax": torch.from_numpy(old.absmax),
               "z_signed": True}
    if isinstance(old, Q4State):
        entries["z_shape"] = old.shape
    return entries


@pytest.mark.parametrize("state_dtype", ["q8", "q4", "bfloat16"])
def test_a_state_dict_with_a_narrow_z_loads_in_the_params_precision(state_dtype):
    p = torch.tensor(z_start(), requires_grad=True)
    opt = lrfast.torch.ScheduleFreeAdamW([p], lr=1e-3, state_dtype=state_dtype)
    opt.train()
    for step in range(2):
        set_grads([p], step)
        opt.step()
    z = opt.state[p].pop("z")
    opt.state[p].update(old_z_entries(z, state_dtype))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    q = torch.tensor(p.detach().numpy(), requires_grad=True)
    again = lrfast.torch.ScheduleFreeAdamW([q], lr=1e-3, state_dtype=state_dtype)
    again.load_state_dict(torch.load(buffer))
    state = again.state[q]
    assert state["z"].dtype == torch.float32 and not any(k.startswith("z_") for k in state)
    np.testing.assert_array_equal(state["z"].numpy(), widened(narrow(z.numpy(), state_dtype)))
    assert ("exp_avg_sq_codes" in state) == (state_dtype != "bfloat16")  # the moments' dtype
    set_grads([q], 2)
    again.step()
    assert state["z"].dtype == torch.float32
