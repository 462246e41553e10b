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
    CASES, GROUP_KEYS, IDS, STEPS, SWITCH_AT, close, close_keys, gradients, initial_params,
)


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
    for step in range(STEPS):
        set_grads(params, step)
        set_grads(theirs, step)
        opt.step()
        ref.step()
        assert_close_to(opt, ref, params, theirs, case, dtype, f"step {step}")
        if case.schedule_free and step == SWITCH_AT:
            opt.eval()
            ref.eval()
            assert_close_to(opt, ref, params, theirs, case, dtype, "eval")
            opt.train()
            ref.train()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_dicts_load_both_ways_with_the_reference(case):
    """The reference's state dict loads into ours and ours into the
    reference; each pair continues as one."""
    init = initial_params(np.float64)
    params, theirs = tensors(init), tensors(init)
    ref = make(case, theirs, ours=False)
    for step in range(3):
        set_grads(theirs, step)
        ref.step()
    with torch.no_grad():
        for p, q in zip(params, theirs):
            p.copy_(q)
    opt = make(case, params)
    # copies, as torch.load makes (load_state_dict may keep the tensors it is given)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    back = make(case, tensors([q.detach().numpy() for q in theirs]), ours=False)
    back.load_state_dict(copy.deepcopy(opt.state_dict()))
    for step in range(3, 6):
        set_grads(params, step)
        set_grads(theirs, step)
        opt.step()
        ref.step()
        assert_close_to(opt, ref, params, theirs, case, np.float64, f"step {step}")
    assert back.state_dict()["param_groups"][0]["lr"] == ref.state_dict()["param_groups"][0]["lr"]


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


@pytest.mark.parametrize(("name", "kw", "match"), [b for b in BAD if b[1].keys() != {"fsdp_in_use"}])
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


@pytest.mark.parametrize("state_dtype", ["bfloat16", "q8"])
@pytest.mark.parametrize("name,kw", [("Lion", dict(lr=1e-3)), ("ScheduleFreeSGD", dict(lr=0.1)),
                                     ("ScheduleFreeAdamW", dict(lr=0.01)), ("Prodigy", {})])
def test_bfloat16_params_with_stochastic_rounding_and_low_precision_states(name, kw,
                                                                         state_dtype):
    """Smoke level: a bfloat16 model with stochastic rounding and bfloat16 or
    q8 states (a 4100-element tensor gets a Q8State) stays close to float32."""
    rng = np.random.default_rng(0)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(4100,), (7,)]]
    runs = []
    for dtype, options in [(torch.float32, {}), (torch.bfloat16, dict(
            state_dtype=state_dtype, stochastic_rounding=True, seed=3))]:
        params = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in init]
        opt = getattr(lrfast.torch, name)(params, **kw, **options)
        if name.startswith("ScheduleFree"):
            opt.train()
        for step in range(10):
            for p, g in zip(params, gradients([p.detach().float().numpy() for p in params],
                                              step)):
                p.grad = torch.tensor(g, dtype=dtype)
            try:
                opt.step()
            except TypeError as exc:  # until the lr-free kernels take 16-bit arrays
                pytest.skip(f"low precision not supported by the step functions yet: {exc}")
        runs.append([p.detach().float() for p in params])
    for a, b in zip(*runs):
        assert float((a - b).norm() / b.norm()) < 0.05
