"""lrfast.torch under hostile use (issue 19): stochastic-rounding streams
across groups, Prodigy after a non-finite gradient, errors in a later param
group before the first is written, state dicts that lie, and threads."""

import copy
import threading

import pytest

torch = pytest.importorskip("torch")

import lrfast.torch as lt  # noqa: E402


def model_and_grads(seed=0, dtype=torch.float32, n=5000):
    g = torch.Generator().manual_seed(seed)
    a = torch.nn.Parameter(torch.randn(n, generator=g).to(dtype))
    b = torch.nn.Parameter(torch.randn(n, generator=g).to(dtype))
    grads = [torch.randn(n, generator=g).to(dtype) for _ in range(2)]
    return a, b, grads


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


def snapshot(opt, params):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_unchanged(opt, params, before):
    now = snapshot(opt, params)
    for p, q in zip(now[0], before[0]):
        assert torch.equal(p.view(torch.uint8) if p.dtype == torch.bfloat16 else p,
                           q.view(torch.uint8) if q.dtype == torch.bfloat16 else q)
    assert now[1]["param_groups"] == before[1]["param_groups"]
    for key, state in before[1]["state"].items():
        for name, value in state.items():
            got = now[1]["state"][key][name]
            assert (torch.equal(got, value) if isinstance(value, torch.Tensor)
                    else got == value), name


def test_equal_bf16_params_in_two_groups_round_differently():
    a, b, grads = model_and_grads(dtype=torch.bfloat16)
    b.data.copy_(a.data)
    opt = lt.AdamW([{"params": [a]}, {"params": [b]}], lr=1e-3, stochastic_rounding=True,
                   seed=3)
    for _ in range(5):
        set_grads([a, b], [grads[0], grads[0]])
        opt.step()
    assert (a.detach() != b.detach()).float().mean() > 0.1


def test_lion_at_seed_s_update_k_plus_1_is_not_seed_s_plus_1_update_k():
    a0, _, grads = model_and_grads(dtype=torch.bfloat16)
    a, b = (torch.nn.Parameter(a0.detach().clone()) for _ in range(2))
    opt_a = lt.Lion([a], lr=1e-2, stochastic_rounding=True, seed=10)
    opt_b = lt.Lion([b], lr=1e-2, stochastic_rounding=True, seed=11)
    set_grads([a], grads[:1])
    opt_a.step()
    with torch.no_grad():  # update 1 of seed 10 from the inputs of update 0 of seed 11
        a.copy_(a0)
        opt_a.state[a]["exp_avg"].zero_()
    set_grads([a], grads[1:])
    set_grads([b], grads[1:])
    opt_a.step()
    opt_b.step()
    assert (a.detach() != b.detach()).float().mean() > 0.05


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_prodigy_refuses_a_non_finite_gradient_and_goes_on(bad):
    a, b, grads = model_and_grads()
    opt = lt.Prodigy([{"params": [a]}, {"params": [b]}])
    set_grads([a, b], grads)
    opt.step()
    bad_grads = [g.clone() for g in grads]
    bad_grads[1][5] = bad
    set_grads([a, b], bad_grads)
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="inf or NaN"):
        opt.step()
    assert_unchanged(opt, [a, b], before)
    for _ in range(3):
        set_grads([a, b], grads)
        opt.step()
    assert torch.isfinite(a).all() and torch.isfinite(torch.tensor(opt.param_groups[0]["d"]))
    again = lt.Prodigy([{"params": [a]}, {"params": [b]}])
    again.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert again.param_groups[1]["d"] == opt.param_groups[1]["d"]


def stepped_twice(cls, **kw):
    a, b, grads = model_and_grads()
    opt = cls([{"params": [a]}, {"params": [b]}], **kw)
    set_grads([a, b], grads)
    opt.step()
    return opt, a, b, grads


def test_prodigy_slice_p_changed_in_group_1_writes_nothing():
    opt, a, b, grads = stepped_twice(lt.Prodigy)
    opt.param_groups[1]["slice_p"] = 3
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="param group 1"):
        opt.step()
    assert_unchanged(opt, [a, b], before)


def test_a_group_1_param_reshaped_in_place_writes_nothing():
    opt, a, b, grads = stepped_twice(lt.AdamW)
    b.data = b.data.view(50, 100)  # the same pointer: the cached plan used to fit
    b.grad = b.grad.view(50, 100)
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="param group 1.*shape"):
        opt.step()
    assert_unchanged(opt, [a, b], before)


def test_an_unsigned_q8_first_moment_in_a_loaded_state_dict_writes_nothing():
    opt, a, b, grads = stepped_twice(lt.AdamW, state_dtype="q8")
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["exp_avg_signed"] = False
    opt.load_state_dict(sd)
    before = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="param group 1.*exp_avg_signed=False"):
        opt.step()
    assert_unchanged(opt, [a, b], before)


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.pop("exp_avg_absmax"), r"lacks \['exp_avg_absmax'\]"),
    (lambda s: s.update(exp_avg_signed="yes"), "needs a bool exp_avg_signed, got a str"),
    (lambda s: s.update(exp_avg_signed=1), "needs a bool exp_avg_signed, got a int"),
])
def test_a_malformed_q8_state_dict_is_a_value_error(edit, match):
    opt, a, b, grads = stepped_twice(lt.AdamW, state_dtype="q8")
    sd = copy.deepcopy(opt.state_dict())
    edit(sd["state"][0])
    opt.load_state_dict(sd)
    with pytest.raises(ValueError, match=match):
        opt.step()


def test_two_threads_stepping_prodigy_make_40_steps():
    a0, b0, grads = model_and_grads(n=100_000)
    ref = [torch.nn.Parameter(t.detach().clone()) for t in (a0, b0)]
    ref_opt = lt.Prodigy(ref)
    set_grads(ref, grads)
    for _ in range(40):
        ref_opt.step()
    params = [torch.nn.Parameter(t.detach().clone()) for t in (a0, b0)]
    opt = lt.Prodigy(params)
    set_grads(params, grads)
    threads = [threading.Thread(target=lambda: [opt.step() for _ in range(20)])
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert opt.param_groups[0]["k"] == 40 and int(opt.state[params[0]]["step"]) == 40
    assert all(torch.equal(p, q) for p, q in zip(params, ref))


def test_the_lock_serialises_a_save_with_steps():
    a, b, grads = model_and_grads(n=100_000)
    opt = lt.Adam([a, b], lr=1e-3)
    set_grads([a, b], grads)
    opt.step()
    stop = threading.Event()

    def steps():
        while not stop.is_set():
            opt.step()

    stepper = threading.Thread(target=steps)
    stepper.start()
    try:
        for _ in range(10):
            with opt.lock:
                sd = opt.state_dict()
                steps_taken = {int(s["step"]) for s in sd["state"].values()}
                first = sd["state"][0]["exp_avg"].clone()
                assert len(steps_taken) == 1 and torch.equal(first, sd["state"][0]["exp_avg"])
    finally:
        stop.set()
        stepper.join()


def test_optimizers_deepcopy_with_a_lock_of_their_own():
    a, b, grads = model_and_grads()
    opt = lt.SGD([a], lr=0.1)
    clone = copy.deepcopy(opt)
    assert clone.lock is not opt.lock
    set_grads([clone.param_groups[0]["params"][0]], grads[:1])
    clone.step()
