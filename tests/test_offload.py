"""lrfast.torch.CPUOffload on the CPU: bit for bit the plain lrfast.torch
optimizer (float32 masters) over several steps with clipping, two param
groups, gradient accumulation and several buckets, for every optimizer class,
with the params as their own masters and with copies (the pipeline's hooks,
buffers and uploads); bfloat16 params and masters; q8 states; checkpoints both
ways; an LR scheduler; host_bytes; errors."""

from __future__ import annotations

import contextlib
import copy

import pytest

torch = pytest.importorskip("torch")

import lrfast  # noqa: E402
import lrfast.torch  # noqa: E402
from lrfast._offload import _HostTransport  # noqa: E402

SHAPES = [(3, 5), (7,), (17,), (33,)]  # the first two in group 0
CLASSES = {
    "SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=1e-2, amsgrad=True),
    "AdamW": dict(lr=1e-2, weight_decay=0.1), "RMSprop": dict(lr=1e-2, momentum=0.5,
                                                               centered=True),
    "Adagrad": dict(lr=0.1), "Adadelta": dict(lr=1.0), "Lion": dict(lr=1e-3),
    "ScheduleFreeSGD": dict(lr=0.1), "ScheduleFreeAdamW": dict(lr=1e-2),
    "Prodigy": dict(lr=1.0),
}
STEPS = 4
MICRO = 2  # backward passes per step
MAX_NORM = 0.5


def model(dtype=torch.float32, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]


def groups(params, lr=None, **options):
    """Two groups, the second with other ``options`` (half the ``lr`` if given)."""
    if lr is not None:
        options["lr"] = lr / 2
    return [{"params": params[:2]}, {"params": params[2:], **options}]


def backward(params, step, micro):
    """A loss whose gradients depend on the params (so the uploads matter)."""
    loss = sum(((p.float() * (1 + 0.1 * (k + step + micro))).sin() * (k + 1)).sum()
               for k, p in enumerate(params))
    loss.backward()


def train(opt, params, clip_in_step=True, accumulate=None, steps=STEPS):
    for step in range(steps):
        for micro in range(MICRO):
            with accumulate(micro < MICRO - 1) if accumulate else contextlib.nullcontext():
                backward(params, step, micro)
        if not clip_in_step:
            lrfast.clip_grad_norm([p.grad for p in params], MAX_NORM)
        opt.step()
        opt.zero_grad()
        yield step


def assert_equal_states(offload, plain, params, twins):
    for p, q in zip(params, twins):
        mine, want = offload.state[p], plain.state[q]
        assert set(mine) == set(want)
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(mine[key], value), key
            else:
                assert mine[key] == value, key


@pytest.fixture(params=[True, False], ids=["own-masters", "copies"])
def shares(request, monkeypatch):
    monkeypatch.setattr(lrfast.torch.CPUOffload, "_shares_cpu_params", request.param)
    return request.param


@pytest.mark.parametrize("name", CLASSES)
def test_equals_the_plain_optimizer(name, shares):
    kw = CLASSES[name]
    cls = getattr(lrfast.torch, name)
    params, twins = model(), model()
    # Prodigy's groups share one rate
    options = dict(weight_decay=0.05) if name == "Prodigy" else dict(lr=kw["lr"])
    offload = lrfast.torch.CPUOffload(groups(params, **options), cls,
                                      max_grad_norm=MAX_NORM, bucket_size=24, **kw)
    plain = cls(groups(twins, **options), **kw)
    assert len(offload._buckets) == (1 if name == "Prodigy" else 3)
    if hasattr(plain, "train"):
        offload.train()
        plain.train()
    for _ in zip(train(offload, params, accumulate=offload.accumulate),
                 train(plain, twins, clip_in_step=False)):
        for p, q in zip(params, twins):
            assert torch.equal(p, q)
        assert_equal_states(offload, plain, params, twins)
        for mine, want in zip(offload.param_groups, plain.param_groups):
            assert {k: v for k, v in mine.items() if k != "params"} == {
                k: v for k, v in want.items() if k != "params"}
    assert offload.last_grad_norm > 0
    if hasattr(plain, "eval"):
        offload.eval()
        plain.eval()
        for p, q in zip(params, twins):
            assert torch.equal(p, q)


def test_a_group_added_later_steps_as_in_the_plain_optimizer(shares):
    params, twins = model(), model()
    offload = lrfast.torch.CPUOffload(params[:2], bucket_size=24, lr=1e-2)
    plain = lrfast.torch.AdamW(twins[:2], lr=1e-2)
    offload.add_param_group({"params": params[2:], "lr": 5e-3})
    plain.add_param_group({"params": twins[2:], "lr": 5e-3})
    assert len(offload._buckets) == 3
    for _ in zip(train(offload, params), train(plain, twins)):
        for p, q in zip(params, twins):
            assert torch.equal(p, q)
    with pytest.raises(ValueError, match="lr"):
        offload.add_param_group({"params": [torch.zeros(3)], "lr": -1.0})
    assert len(offload.param_groups) == 2 and len(offload._buckets[0].optimizer.param_groups) == 2


def test_gradients_go_down_once_per_step(monkeypatch, shares):
    if shares:
        pytest.skip("a CPU param that is its own master copies nothing")
    sent = []
    original = _HostTransport.send_grad
    monkeypatch.setattr(_HostTransport, "send_grad",
                        lambda self, grad, buffer: sent.append(1) or original(self, grad,
                                                                             buffer))
    params = model()
    opt = lrfast.torch.CPUOffload(params, lr=1e-2)
    for step in train(opt, params, accumulate=opt.accumulate):
        assert len(sent) == len(params) * (step + 1)
    # without accumulate(): every backward copies; correct, more traffic
    list(train(opt, params, steps=1))
    assert len(sent) == len(params) * (STEPS + MICRO)


def test_a_gradient_changed_after_its_copy_is_copied_again(shares):
    params, twins = model(), model()
    offload = lrfast.torch.CPUOffload(params, lr=1e-2)
    plain = lrfast.torch.AdamW(twins, lr=1e-2)
    for opt, ps in ((offload, params), (plain, twins)):
        backward(ps, 0, 0)
        for p in ps:
            p.grad.mul_(0.5)  # as GradScaler.unscale_ does
        opt.step()
    for p, q in zip(params, twins):
        assert torch.equal(p, q)


def test_bfloat16_params_with_float32_masters():
    """A bfloat16 model: masters and states equal the plain optimizer's over
    float32 params fed the bfloat16 gradients; the params are the masters
    rounded to nearest."""
    params = model(torch.bfloat16)
    twins = [p.detach().float().requires_grad_() for p in params]
    offload = lrfast.torch.CPUOffload(groups(params, 1e-2), max_grad_norm=MAX_NORM,
                                      bucket_size=20, lr=1e-2)
    plain = lrfast.torch.AdamW(groups(twins, 1e-2), lr=1e-2)
    for step in range(STEPS):
        backward(params, step, 0)
        for p, q in zip(params, twins):
            q.grad = p.grad.float()
        lrfast.clip_grad_norm([q.grad for q in twins], MAX_NORM)
        offload.step()
        plain.step()
        for p, q in zip(params, twins):
            assert torch.equal(offload._entries[p].master, q.detach())
            assert torch.equal(p, q.detach().bfloat16())
        offload.zero_grad()
    assert_equal_states(offload, plain, params, twins)


def bf16_run(seed, bucket_size=2**25):
    params = model(torch.bfloat16, shapes=[(300,), (300,)])
    with torch.no_grad():
        params[1].copy_(params[0])
    opt = lrfast.torch.CPUOffload(params, master_dtype="bfloat16", state_dtype="q8",
                                  bucket_size=bucket_size, lr=1e-3, seed=seed)
    for step in range(3):
        for p in params:
            p.grad = torch.full_like(p, 0.01 * (step + 1))
        opt.step()
    return params


def test_bfloat16_masters_round_stochastically_and_reproducibly():
    first, again, other = bf16_run(1), bf16_run(1), bf16_run(2)
    assert all(map(torch.equal, first, again))
    assert not torch.equal(first[0], other[0])
    # the same param and gradient in two buckets draw different bits
    split = bf16_run(1, bucket_size=300)
    assert torch.equal(split[0], first[0]) and not torch.equal(split[0], split[1])


def test_q8_states_equal_the_plain_optimizers(shares):
    params, twins = model(shapes=[(4100,), (7,)]), model(shapes=[(4100,), (7,)])
    offload = lrfast.torch.CPUOffload(params, state_dtype="q8", lr=1e-2)
    plain = lrfast.torch.AdamW(twins, state_dtype="q8", lr=1e-2)
    for _ in zip(train(offload, params), train(plain, twins)):
        pass
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
    assert_equal_states(offload, plain, params, twins)
    assert "exp_avg_codes" in offload.state[params[0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checkpoints_load_into_the_plain_optimizer_and_back(dtype, shares):
    params, twins, others = model(dtype), model(dtype), model(dtype)
    offload = lrfast.torch.CPUOffload(groups(params, 1e-2), lr=1e-2, bucket_size=20)
    list(train(offload, params, steps=2))
    saved = offload.state_dict()
    assert ("master" in saved["state"][0]) == (dtype == torch.bfloat16)
    plain = lrfast.torch.AdamW(groups(twins, 1e-2), lr=1e-2)
    plain.load_state_dict(copy.deepcopy(saved))  # as through torch.save and torch.load
    with torch.no_grad():
        for p, q in zip(params, twins):
            q.copy_(p)
    with torch.no_grad():  # the model's weights first, then the optimizer's state
        for p, q in zip(params, others):
            q.copy_(p)
    back = lrfast.torch.CPUOffload(groups(others, 1e-2), lr=1e-2)
    back.load_state_dict(copy.deepcopy(saved))
    for p, q in zip(params, others):  # masters from the state dict (bfloat16 params)
        assert torch.equal(offload._entries[p].master, back._entries[q].master)
    for _ in zip(train(offload, params, steps=2), train(back, others, steps=2)):
        pass
    for p, q in zip(params, others):
        assert torch.equal(p, q)
    if dtype == torch.float32:
        list(train(plain, twins, steps=2))
        for p, q in zip(params, twins):
            assert torch.equal(p, q)
        again = lrfast.torch.CPUOffload(groups(model(), 1e-2), lr=1e-2)
        again.load_state_dict(copy.deepcopy(plain.state_dict()))
        assert_equal_states(again, plain, again.param_groups[0]["params"],
                            plain.param_groups[0]["params"])


def test_an_lr_scheduler_drives_it(shares):
    params, twins = model(), model()
    offload = lrfast.torch.CPUOffload(groups(params, 0.1), lrfast.torch.SGD, lr=0.1)
    plain = lrfast.torch.SGD(groups(twins, 0.1), lr=0.1)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
                  for o in (offload, plain)]
    for _ in zip(train(offload, params), train(plain, twins)):
        for s in schedulers:
            s.step()
    assert offload.param_groups[1]["lr"] == 0.05 * 0.5**STEPS
    for p, q in zip(params, twins):
        assert torch.equal(p, q)


@pytest.mark.parametrize("master, state, per_param", [
    ("float32", None, 12), ("float32", "q8", 6.03), ("bfloat16", "q8", 4.03),
    ("bfloat16", "q4", 3.06)])
def test_host_bytes(master, state, per_param):
    params = [torch.zeros(2**16, dtype=torch.bfloat16, requires_grad=True)]
    opt = lrfast.torch.CPUOffload(params, master_dtype=master, state_dtype=state)
    params[0].grad = torch.ones_like(params[0])
    opt.step()
    got = opt.host_bytes()
    assert got["per_param"] == pytest.approx(per_param, abs=0.01)
    if master == "bfloat16":  # a bfloat16 CPU param is its own bfloat16 master
        assert got["grads"] == 0
    else:
        assert got["grads"] == 4 * 2**16
        assert got["per_param_with_grads"] == pytest.approx(per_param + 4, abs=0.01)


def test_bad_params_and_arguments():
    with pytest.raises(TypeError, match="parameter 1 has dtype torch.complex64"):
        lrfast.torch.CPUOffload([torch.zeros(2), torch.zeros(2, dtype=torch.complex64)])
    with pytest.raises(TypeError, match="sparse"):
        lrfast.torch.CPUOffload([torch.zeros(3, 3).to_sparse()])
    with pytest.raises(ValueError, match="bfloat16 master cannot hold"):
        lrfast.torch.CPUOffload([torch.zeros(2)], master_dtype="bfloat16")
    with pytest.raises(ValueError, match="master_dtype"):
        lrfast.torch.CPUOffload([torch.zeros(2)], master_dtype="float16")
    with pytest.raises(TypeError, match="lrfast.torch optimizer class"):
        lrfast.torch.CPUOffload([torch.zeros(2)], torch.optim.AdamW)
    with pytest.raises(ValueError, match="max_grad_norm"):
        lrfast.torch.CPUOffload([torch.zeros(2)], max_grad_norm=-1.0)
    with pytest.raises(ValueError, match="betas"):
        lrfast.torch.CPUOffload([torch.zeros(2)], betas=(2.0, 0.9))
    with pytest.raises(AttributeError, match="schedule-free"):
        lrfast.torch.CPUOffload([torch.zeros(2)]).train()


def test_sparse_gradients_are_refused():
    embedding = torch.nn.Embedding(10, 4, sparse=True).bfloat16()
    opt = lrfast.torch.CPUOffload(embedding.parameters())
    with pytest.raises(TypeError, match="sparse"):
        embedding(torch.tensor([1, 2])).float().sum().backward()
    del opt  # its hooks go with it
    embedding(torch.tensor([1, 2])).float().sum().backward()
