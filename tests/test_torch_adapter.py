"""lrfast.torch against torch.optim: the same training step for step (every case
of tests/cases.py, with a scheduler and gradient clipping), state dicts that
load both ways, GradScaler, closures, parameters without gradients, and the
errors for what the kernels cannot take."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lrfast.torch  # noqa: E402
from cases import TORCH_CASES  # noqa: E402

CASE_TABLE = TORCH_CASES  # the cases with a torch.optim class

STEPS = 10
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


class Net(torch.nn.Module):
    """A small model with a parameter that never gets a gradient."""

    def __init__(self, dtype):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(6, 5, dtype=dtype)
        self.b = torch.nn.Linear(5, 3, dtype=dtype)
        self.unused = torch.nn.Parameter(torch.ones(4, dtype=dtype))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def batch(step, dtype):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 6, generator=g, dtype=dtype)
    return x, torch.randn(8, 3, generator=g, dtype=dtype)


def train_step(model, opt, step, dtype, grad_scale=1.0, max_norm=0.5):
    opt.zero_grad()
    x, y = batch(step, dtype)
    torch.nn.functional.mse_loss(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if grad_scale != 1.0:  # torch.optim has no grad_scale: scale both sides' gradients
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(grad_scale)
    opt.step()


def twins(case, hp, dtype):
    """The same model under torch.optim.X and lrfast.torch.X, with StepLR."""
    kw = {k: v for k, v in hp.items() if k != "grad_scale"}
    out = []
    for module in (torch.optim, lrfast.torch):
        model = Net(dtype)
        opt = getattr(module, case.torch_name)(model.parameters(), **kw)
        out.append((model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)))
    return out


def max_difference(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


def assert_close(case, np_dtype, model, ref):
    rtol, atol = case.tol[np_dtype]
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.dtype == q.dtype
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=name)


def test_matches_torch_optim(case, hp, dtype):
    tdtype = TORCH_DTYPE[dtype]
    (ref, ref_opt, ref_sched), (model, opt, sched) = twins(case, hp, tdtype)
    for step in range(STEPS):
        for m, o, s in ((ref, ref_opt, ref_sched), (model, opt, sched)):
            train_step(m, o, step, tdtype, hp.get("grad_scale", 1.0))
            s.step()
        assert_close(case, dtype, model, ref)
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    assert torch.equal(model.unused, torch.ones(4, dtype=tdtype))  # grad None: skipped
    assert model.unused not in opt.state or case.torch_name == "Adagrad"
    for p, q in zip(model.parameters(), ref.parameters()):
        assert opt.state[p].keys() == ref_opt.state[q].keys()
        for key, value in ref_opt.state[q].items():
            got = opt.state[p][key]
            assert got.dtype == value.dtype and got.shape == value.shape, key
            if key == "step":
                assert got.item() == value.item()
            else:
                torch.testing.assert_close(got, value, rtol=case.tol[dtype][0] * 10,
                                           atol=case.tol[dtype][1] * 10)


def richest(case):
    """The hyperparameters of a case that use the most state."""
    return max(case.grid, key=lambda hp: (len(case.states_for(hp)), "grad_scale" not in hp))


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
@pytest.mark.parametrize("direction", ["lrfast_to_torch", "torch_to_lrfast"])
def test_state_dict_loads_both_ways(case, direction):
    hp = richest(case)
    (ref, ref_opt, _), (model, opt, _) = twins(case, hp, torch.float64)
    for step in range(3):
        train_step(ref, ref_opt, step, torch.float64)
        train_step(model, opt, step, torch.float64)
    # swap: each model continues under the other library, from the other's state
    if direction == "lrfast_to_torch":
        src, src_model, dst_module = opt, model, torch.optim
    else:
        src, src_model, dst_module = ref_opt, ref, lrfast.torch
    kw = {k: v for k, v in hp.items() if k != "grad_scale"}
    target = copy.deepcopy(src_model)
    swapped = getattr(dst_module, case.torch_name)(target.parameters(), **kw)
    swapped.load_state_dict(copy.deepcopy(src.state_dict()))
    for step in range(3, 6):
        train_step(ref, ref_opt, step, torch.float64)
        train_step(target, swapped, step, torch.float64)
    # torch.optim casts a loaded state to its params' dtype, NAdam's float32
    # mu_product too: from there its products leave those of a run that went
    # straight through (tests/test_adaptive_classes.py compares with a reload)
    cast = direction == "lrfast_to_torch" and case.name == "nadam"
    assert max_difference(target, ref) < (1e-10 if cast else 1e-12)


def test_step_counters_are_torch_float32_scalars():
    model = Net(torch.float32)
    opt = lrfast.torch.Adam(model.parameters())
    for step in range(3):
        train_step(model, opt, step, torch.float32)
    for p in model.parameters():
        if p is not model.unused:
            step = opt.state[p]["step"]
            assert step.dtype == torch.float32 and step.shape == () and step.item() == 3.0
    saved = opt.state_dict()
    assert all(s["step"].item() == 3.0 for s in saved["state"].values())


def test_parameters_that_miss_updates_keep_their_own_count():
    """Adam's bias correction uses each parameter's own step count: a parameter
    that had no gradient at first is updated in a call of its own."""
    models = [Net(torch.float64) for _ in range(2)]
    opts = [torch.optim.Adam(models[0].parameters(), lr=0.01),
            lrfast.torch.Adam(models[1].parameters(), lr=0.01)]
    for step in range(6):
        for m, o in zip(models, opts):
            o.zero_grad()
            x, y = batch(step, torch.float64)
            loss = torch.nn.functional.mse_loss(m(x), y)
            if step >= 2:
                loss = loss + (m.unused ** 2).sum()
            loss.backward()
            o.step()
    assert max_difference(*models) < 1e-12
    assert opts[1].state[models[1].unused]["step"].item() == 4.0


def test_mixed_dtypes_and_param_groups():
    def build(module):
        torch.manual_seed(1)
        a = torch.nn.Parameter(torch.randn(5, dtype=torch.float32))
        b = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
        c = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
        opt = module.AdamW([{"params": [a, b]}, {"params": [c], "lr": 0.1, "amsgrad": True}],
                           lr=0.01)
        return (a, b, c), opt

    (pa, oa), (pb, ob) = build(torch.optim), build(lrfast.torch)
    for step in range(5):
        for params, opt in ((pa, oa), (pb, ob)):
            opt.zero_grad()
            sum((p.double() ** 2).sum() * (step + 1) for p in params).backward()
            opt.step()
    for p, q in zip(pa, pb):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


def test_grad_scaler_and_closure():
    models = [Net(torch.float32) for _ in range(2)]
    opts = [torch.optim.SGD(models[0].parameters(), lr=0.1, momentum=0.9),
            lrfast.torch.SGD(models[1].parameters(), lr=0.1, momentum=0.9)]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) for _ in range(2)]
    for step in range(6):
        for m, o, s in zip(models, opts, scalers):
            o.zero_grad()
            x, y = batch(step, torch.float32)
            loss = torch.nn.functional.mse_loss(m(x), y)
            if step == 3:
                loss = loss * float("inf")  # this step is skipped by the scaler
            s.scale(loss).backward()
            s.step(o)
            s.update()
    torch.testing.assert_close(models[1].a.weight, models[0].a.weight)

    model = Net(torch.float64)
    opt = lrfast.torch.RMSprop(model.parameters())
    x, y = batch(0, torch.float64)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    assert opt.step(closure).item() > 0


def test_reloaded_or_moved_parameters():
    """load_state_dict and a parameter's storage replaced (p.data = ...)
    mid-training: the cached views are rebuilt."""
    models = [Net(torch.float64) for _ in range(2)]
    opts = [torch.optim.Adam(models[0].parameters(), lr=0.01),
            lrfast.torch.Adam(models[1].parameters(), lr=0.01)]
    for step in range(6):
        if step == 2:
            for m in models:
                m.a.weight.data = m.a.weight.data.clone()
        if step == 4:
            for o in opts:
                o.load_state_dict(copy.deepcopy(o.state_dict()))
        for m, o in zip(models, opts):
            train_step(m, o, step, torch.float64)
    assert max_difference(*models) < 1e-12
    clone = copy.deepcopy(opts[1])  # pickles without the cached views
    assert clone.state_dict()["state"][1]["step"].item() == 6.0


def test_tensor_hyperparameters_are_read_as_numbers():
    models = [Net(torch.float32) for _ in range(2)]
    opts = [lrfast.torch.SGD(models[0].parameters(), lr=torch.tensor(0.25), momentum=0.5),
            lrfast.torch.SGD(models[1].parameters(), lr=0.25, momentum=0.5)]
    for step in range(3):
        for m, o in zip(models, opts):
            train_step(m, o, step, torch.float32)
    assert max_difference(*models) == 0


def test_errors():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="differentiable"):
        lrfast.torch.Adam([p], differentiable=True)
    with pytest.raises(ValueError, match="capturable"):
        lrfast.torch.AdamW([p], capturable=True)
    with pytest.raises(ValueError, match="lr"):
        lrfast.torch.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        lrfast.torch.SGD([p], nesterov=True)
    lrfast.torch.Adam([p], foreach=True)  # accepted, one implementation
    lrfast.torch.Adam([p], fused=True)

    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = lrfast.torch.Adagrad(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()

    for tensor, error, match in [(torch.zeros(3, dtype=torch.complex64), TypeError, "complex64"),
                                 (torch.zeros(4, 3).t(), ValueError, "contiguous"),
                                 (torch.zeros(3, device="meta"), TypeError, "meta")]:
        q = torch.nn.Parameter(tensor)
        q.grad = torch.zeros_like(q)
        with pytest.raises(error, match=match):
            lrfast.torch.SGD([q], lr=0.1).step()


def test_every_case_names_a_torch_class():
    for case in TORCH_CASES:
        cls = getattr(lrfast.torch, case.torch_name)
        assert issubclass(cls, torch.optim.Optimizer)


# ------------------------------------------------- issue 10: as torch.optim does


@pytest.mark.parametrize("module", [torch.optim, lrfast.torch], ids=["torch", "lrfast"])
def test_backward_through_old_weights_after_a_step_raises(module):
    """A step writes the parameters in place, so autograd refuses a graph
    that saved the old values, as it does after torch.optim's step."""
    p = torch.nn.Parameter(torch.randn(5))
    loss = (p * p).sum()  # saves p for backward
    opt = module.Adam([p], lr=0.1)
    p.grad = torch.ones(5)
    opt.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_a_step_moves_the_version_of_every_tensor_it_writes(case):
    hp = {k: v for k, v in richest(case).items() if k != "grad_scale"}
    counts = []
    for module in (torch.optim, lrfast.torch):
        model = Net(torch.float32)
        opt = getattr(module, case.torch_name)(model.parameters(), **hp)
        train_step(model, opt, 0, torch.float32)
        tensors = [t for p in model.parameters() if p.grad is not None
                   for t in (p, *opt.state[p].values())]
        before = [t._version for t in tensors]
        train_step(model, opt, 1, torch.float32)
        counts.append([t._version > v for t, v in zip(tensors, before)])
    assert counts[1] == counts[0] and all(counts[1])


def two_groups(module, lr2=0.1):
    torch.manual_seed(3)
    a, b = (torch.nn.Parameter(torch.randn(4)) for _ in range(2))
    opt = module.Adam([{"params": [a]}, {"params": [b], "lr": lr2}], lr=0.1)
    for p in (a, b):
        p.grad = torch.randn(4)
    return (a, b), opt


def test_a_bad_second_group_writes_nothing():
    (a, b), opt = two_groups(lrfast.torch)
    opt.step()
    before = [t.clone() for t in (a, b, opt.state[a]["exp_avg"], opt.state[a]["step"])]
    opt.param_groups[1]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    after = (a, b, opt.state[a]["exp_avg"], opt.state[a]["step"])
    assert all(torch.equal(x, y) for x, y in zip(before, after))

    opt.param_groups[1]["lr"] = 0.1
    c = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))  # a param the kernels refuse
    c.grad = torch.zeros_like(c)
    opt.param_groups[1]["params"].append(c)
    with pytest.raises(TypeError, match="complex64"):
        opt.step()
    assert all(torch.equal(x, y) for x, y in zip(before, after))


@pytest.mark.parametrize("flag", ["capturable", "differentiable"])
def test_options_refused_at_construction_are_refused_at_step(flag):
    (a, b), opt = two_groups(lrfast.torch)
    opt.step()
    before = [a.clone(), b.clone()]
    opt.param_groups[1][flag] = True
    with pytest.raises(ValueError, match=flag):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


def test_initial_accumulator_value_changed_after_construction_is_refused():
    p = torch.nn.Parameter(torch.ones(3))
    opt = lrfast.torch.Adagrad([p])
    opt.param_groups[0]["initial_accumulator_value"] = -1.0
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        opt.step()
    assert torch.equal(p, torch.ones(3))


def odd_gradients():
    """Gradients torch.optim takes but a kernel cannot read in place:
    transposed, expanded (stride 0) and with the negative bit set."""
    torch.manual_seed(4)
    return {"transposed": torch.randn(4, 3).t(),
            "expanded": torch.randn(1, 4).expand(3, 4),
            "negative bit": torch._neg_view(torch.randn(3, 4))}


@pytest.mark.parametrize("kind", list(odd_gradients()))
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_gradients_of_any_layout(kind, name):
    results = []
    for module in (torch.optim, lrfast.torch):
        torch.manual_seed(5)
        p = torch.nn.Parameter(torch.randn(3, 4))
        storage = p.data_ptr()
        opt = getattr(module, name)([p], lr=0.1, **({"momentum": 0.9} if name == "SGD" else {}))
        for _ in range(2):
            p.grad = odd_gradients()[kind]
            opt.step()
        assert p.data_ptr() == storage  # updated in place
        results.append(p.detach().clone())
    torch.testing.assert_close(results[1], results[0])


def test_non_contiguous_state_from_a_torch_state_dict():
    torch.manual_seed(6)
    params = [torch.nn.Parameter(torch.randn(3, 4)) for _ in range(2)]
    ref = torch.optim.Adam([params[0]], lr=0.1)
    params[0].grad = torch.randn(3, 4)
    ref.step()
    saved = copy.deepcopy(ref.state_dict())
    for key in ("exp_avg", "exp_avg_sq"):  # the same values, in Fortran order
        saved["state"][0][key] = saved["state"][0][key].t().contiguous().t()
    with torch.no_grad():
        params[1].copy_(params[0])
    opt = lrfast.torch.Adam([params[1]], lr=0.1)
    opt.load_state_dict(saved)
    grad = torch.randn(3, 4)
    for p, o in zip(params, (ref, opt)):
        p.grad = grad.clone()
        o.step()
    torch.testing.assert_close(params[1], params[0])
    state = opt.state[params[1]]
    assert state["exp_avg"].is_contiguous() and state["exp_avg_sq"].is_contiguous()
    torch.testing.assert_close(state["exp_avg"], ref.state[params[0]]["exp_avg"])


def test_a_sparse_gradient_in_a_later_group_writes_nothing():
    dense = torch.nn.Parameter(torch.ones(3))
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = lrfast.torch.Adagrad([{"params": [dense]}, {"params": emb.parameters()}])
    dense.grad = torch.ones(3)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(dense, torch.ones(3))
