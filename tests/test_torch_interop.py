"""Optimizer state dicts between lrfast.torch and other libraries.

Out: ``lrfast.torch.to_float_state_dict`` of a state dict with q8, q4 or
bfloat16 states loads into torch.optim's class of the same name (and into
lion-pytorch, schedulefree and prodigyopt), which trains on as an lrfast
optimizer with float32 states loaded from the same dict does.

In: bitsandbytes' Adam8bit/AdamW8bit state dicts load into lrfast.torch's
Adam/AdamW(state_dtype="q8") with moments that dequantize to bitsandbytes'
own exactly, and training goes on as torch.optim.AdamW does from those
moments, to what 8-bit states allow. Tests of other packages skip without them.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import lrfast.torch  # noqa: E402
from lrfast.precision import Q8State, dequantize_blockwise, dequantize_blockwise_q4  # noqa: E402

# a state of 8192 elements (q8/q4 when asked) and one of 64 (float32: under 4096)
SHAPES = [(64, 128), (64,)]
LRFAST_KEYS = {"state_dtype", "stochastic_rounding", "seed"}

TORCH_CASES = {
    "SGD": dict(lr=0.05, momentum=0.9),
    "Adam": dict(lr=1e-2, amsgrad=True, weight_decay=0.1),
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "RMSprop": dict(lr=1e-3, momentum=0.9, centered=True),
    "Adagrad": dict(lr=0.05, initial_accumulator_value=0.1),
    "Adadelta": dict(),
}
# (lrfast.torch's class, the counterpart, arguments, lrfast-only keys besides LRFAST_KEYS)
COUNTERPART_CASES = [
    ("Lion", "lion_pytorch.Lion", dict(lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True),
     {"init_lr", "decoupled_weight_decay", "maximize"}),
    ("ScheduleFreeAdamW", "schedulefree.AdamWScheduleFree", dict(lr=1e-2), {"maximize"}),
    ("ScheduleFreeSGD", "schedulefree.SGDScheduleFree", dict(lr=0.1), {"maximize"}),
    ("Prodigy", "prodigyopt.Prodigy", dict(weight_decay=0.1), {"maximize"}),
]


def new_params():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g).requires_grad_() for shape in SHAPES]


def clones(params):
    return [p.detach().clone().requires_grad_() for p in params]


def train(opt, params, steps):
    """A noisy quadratic's gradients, the same for every optimizer at a step."""
    for step in steps:
        g = torch.Generator().manual_seed(1000 + step)
        for p in params:
            p.grad = 0.5 * (p.detach() - 1.0) + torch.randn(p.shape, generator=g)
        opt.step()


def expected_float(state, key):
    """What a state of lrfast.torch is as float32, read from its entries."""
    if f"{key}_shape" in state:
        return torch.from_numpy(dequantize_blockwise_q4(
            state[f"{key}_codes"].numpy(), state[f"{key}_absmax"].numpy(),
            state[f"{key}_shape"], state[f"{key}_signed"]))
    if f"{key}_codes" in state:
        return torch.from_numpy(dequantize_blockwise(
            state[f"{key}_codes"].numpy(), state[f"{key}_absmax"].numpy(), state[f"{key}_signed"]))
    return state[key].float()


def assert_converted(sd, converted, params, extra_keys=()):
    """Groups without lrfast's keys; each state float32 under torch's keys,
    holding what lrfast's state dequantizes to, in its shape."""
    for group, plain in zip(sd["param_groups"], converted["param_groups"]):
        assert set(plain) == set(group) - LRFAST_KEYS - set(extra_keys)
    low_bit = 0
    for j in range(len(params)):
        state, plain = sd["state"][j], converted["state"][j]
        keys = {k for k in state if not k.endswith(("_codes", "_absmax", "_signed", "_shape"))}
        keys |= {k[:-len("_codes")] for k in state if k.endswith("_codes")}
        assert set(plain) == keys
        low_bit += any(k.endswith("_codes") for k in state)
        for key, value in plain.items():
            if key == "step":
                assert value is state["step"]
            elif isinstance(value, torch.Tensor):
                assert value.dtype == torch.float32, key
                torch.testing.assert_close(value, expected_float(state, key), rtol=0, atol=0)
    return low_bit


def snapshot(sd):
    return copy.deepcopy(sd), {j: dict(s) for j, s in sd["state"].items()}


def assert_unchanged(sd, saved):
    deep, shallow = saved
    assert [dict(g) for g in sd["param_groups"]] == deep["param_groups"]
    assert set(sd["state"]) == set(deep["state"])
    for j, state in sd["state"].items():
        assert set(state) == set(deep["state"][j])
        for key, value in state.items():
            assert value is shallow[j][key]  # the same objects, with the same values
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, deep["state"][j][key])


def assert_trains_on(ours, ref, params, theirs, rtol=1e-5):
    """``ref`` (loaded from the converted dict) and ``ours`` (lrfast with
    float32 states, loaded from it too) go on as one; ``ref`` had every state
    it needs in the dict (it made none of its own)."""
    keys = [set(ref.state[q]) for q in theirs]
    train(ref, theirs, range(3, 6))
    train(ours, params, range(3, 6))
    assert [set(ref.state[q]) for q in theirs] == keys
    for p, q in zip(params, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=rtol * 1e-1)


@pytest.mark.parametrize("state_dtype", ["q8", "q4", "bfloat16"])
@pytest.mark.parametrize("name", TORCH_CASES)
def test_a_converted_state_dict_trains_on_in_torch_optim(name, state_dtype):
    kw = TORCH_CASES[name]
    params = new_params()
    opt = getattr(lrfast.torch, name)(params, **kw, state_dtype=state_dtype)
    train(opt, params, range(3))
    sd = opt.state_dict()
    saved = snapshot(sd)
    converted = lrfast.torch.to_float_state_dict(sd)
    assert_unchanged(sd, saved)
    low_bit = assert_converted(sd, converted, params)
    assert low_bit == (state_dtype != "bfloat16")  # the large param's states only
    theirs, ours = clones(params), clones(params)
    ref = getattr(torch.optim, name)(theirs, **kw)
    ref.load_state_dict(copy.deepcopy(converted))
    again = getattr(lrfast.torch, name)(ours, **kw, state_dtype="float32")
    again.load_state_dict(copy.deepcopy(converted))
    assert_trains_on(again, ref, ours, theirs)


@pytest.mark.parametrize("name, package, kw, extra", COUNTERPART_CASES,
                         ids=[case[0] for case in COUNTERPART_CASES])
def test_a_converted_state_dict_trains_on_in_the_counterpart_package(name, package, kw, extra):
    module, cls = package.rsplit(".", 1)
    counterpart = getattr(pytest.importorskip(module), cls)
    params = new_params()
    schedule_free = name.startswith("ScheduleFree")
    opt = getattr(lrfast.torch, name)(params, **kw, state_dtype="q8")
    if schedule_free:
        opt.train()
    train(opt, params, range(3))
    sd = opt.state_dict()
    converted = lrfast.torch.to_float_state_dict(sd)
    # schedule-free SGD's one state, z, keeps its param's precision: nothing low-bit
    assert assert_converted(sd, converted, params, extra) == (name != "ScheduleFreeSGD")
    theirs, ours = clones(params), clones(params)
    ref, again = counterpart(theirs, **kw), getattr(lrfast.torch, name)(ours, **kw)
    if schedule_free:
        ref.train()
        again.train()
    ref.load_state_dict(copy.deepcopy(converted))
    again.load_state_dict(copy.deepcopy(converted))
    assert_trains_on(again, ref, ours, theirs, rtol=1e-4)


def test_maximize_with_a_counterpart_that_cannot_is_refused():
    sd = lrfast.torch.Lion(new_params(), maximize=True, state_dtype="q8").state_dict()
    with pytest.raises(ValueError, match="param group 0: maximize=True"):
        lrfast.torch.to_float_state_dict(sd)
    # torch.optim's classes maximize: the key stays
    sd = lrfast.torch.SGD(new_params(), maximize=True).state_dict()
    assert lrfast.torch.to_float_state_dict(sd)["param_groups"][0]["maximize"] is True


def q8_adamw_state_dict():
    params = new_params()
    opt = lrfast.torch.AdamW(params, state_dtype="q8")
    train(opt, params, range(2))
    return opt.state_dict()


@pytest.mark.parametrize("entry, value, error, match", [
    ("exp_avg_absmax", None, ValueError, r"state 0: low-bit state 'exp_avg' lacks \['exp_avg_absmax'\]"),
    ("exp_avg_absmax", torch.zeros(3), ValueError, r"state 0, low-bit state 'exp_avg': absmax: expected 32"),
    ("exp_avg_codes", torch.zeros(64, 128), TypeError, r"state 0, low-bit state 'exp_avg': codes: expected dtype uint8"),
    ("exp_avg_sq_signed", 1, TypeError, r"'exp_avg_sq': signed: expected a bool"),
    ("exp_avg_codes", np.zeros((64, 128), np.uint8), TypeError, "exp_avg_codes and exp_avg_absmax must be tensors"),
])
def test_a_bad_low_bit_state_is_named_and_nothing_changes(entry, value, error, match):
    sd = q8_adamw_state_dict()
    sd["state"][0] = dict(sd["state"][0])
    if value is None:
        del sd["state"][0][entry]
    else:
        sd["state"][0][entry] = value
    saved = snapshot(sd)
    with pytest.raises(error, match=match):
        lrfast.torch.to_float_state_dict(sd)
    assert_unchanged(sd, saved)


def test_not_a_state_dict_is_a_type_error():
    with pytest.raises(TypeError, match="to_float_state_dict: expected an optimizer state dict"):
        lrfast.torch.to_float_state_dict([])


# -- bitsandbytes in

BNB_CASES = [("AdamW8bit", "AdamW"), ("Adam8bit", "Adam")]


def bnb():
    return pytest.importorskip("bitsandbytes")


def bnb_state_dict(cls_name, nested=True, steps=3, **kw):
    """bitsandbytes' optimizer after ``steps`` steps, its params, and its state
    dict through torch.save/torch.load: nested as bitsandbytes' state_dict()
    makes it, or flat as its optimizer keeps it."""
    params = new_params()
    theirs = getattr(bnb().optim, cls_name)(params, lr=1e-3, weight_decay=0.1, **kw)
    train(theirs, params, range(steps))
    sd = theirs.state_dict()
    if not nested:
        sd["state"] = {j: {k: v for k, v in theirs.state[p].items()}
                       for j, p in enumerate(params)}
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    buffer.seek(0)
    return theirs, params, torch.load(buffer)


@pytest.mark.parametrize("nested", [True, False], ids=["nested", "flat"])
@pytest.mark.parametrize("bnb_name, name", BNB_CASES)
def test_a_bitsandbytes_state_dict_loads_and_training_goes_on(bnb_name, name, nested):
    functional = pytest.importorskip("bitsandbytes.functional")
    theirs, bnb_params, sd = bnb_state_dict(bnb_name, nested)
    params = clones(bnb_params)
    opt = getattr(lrfast.torch, name)(params, lr=1e-3, weight_decay=0.1, state_dtype="q8")
    opt.load_state_dict(sd)
    # bitsandbytes decays weights decoupled in Adam8bit too
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    assert not {"alpha", "t_alpha", "t_beta3"} & set(opt.param_groups[0])
    big, small = (opt.state[p] for p in params)
    bnb_big, bnb_small = (theirs.state[p] for p in bnb_params)
    assert set(big) == {"step", "exp_avg_codes", "exp_avg_absmax", "exp_avg_signed",
                        "exp_avg_sq_codes", "exp_avg_sq_absmax", "exp_avg_sq_signed"}
    assert big["exp_avg_signed"] is True and big["exp_avg_sq_signed"] is False
    moments = {}
    for n, key in ((1, "exp_avg"), (2, "exp_avg_sq")):
        ours = Q8State(big[f"{key}_codes"].numpy(), big[f"{key}_absmax"].numpy(),
                       big[f"{key}_signed"]).dequantize()
        moments[key] = functional.dequantize_blockwise(
            bnb_big[f"state{n}"], absmax=bnb_big[f"absmax{n}"], code=bnb_big[f"qmap{n}"],
            blocksize=256)
        np.testing.assert_array_equal(ours, moments[key].numpy())
        # under min_8bit_size bitsandbytes keeps float32 states: the same values
        assert torch.equal(small[key], bnb_small[f"state{n}"])
    assert set(small) == {"step", "exp_avg", "exp_avg_sq"}
    assert int(big["step"]) == int(small["step"]) == 3 and big["step"].dtype == torch.float32

    # torch.optim.AdamW from bitsandbytes' dequantized moments, as the reference
    refs = clones(bnb_params)
    ref = torch.optim.AdamW(refs, lr=1e-3, weight_decay=0.1)
    small_moments = {"exp_avg": bnb_small["state1"], "exp_avg_sq": bnb_small["state2"]}
    for q, values in zip(refs, (moments, small_moments)):
        ref.state[q] = {"step": torch.tensor(3.0), **{k: v.clone() for k, v in values.items()}}
    start = [q.detach().clone() for q in refs]
    train(opt, params, range(3, 6))
    train(ref, refs, range(3, 6))
    assert int(big["step"]) == 6
    for p, q, s in zip(params, refs, start):
        moved = (q.detach() - s).abs().max()
        # the params moved by ~3e-3; 8-bit moments change the update by a few %
        assert (p.detach() - q.detach()).abs().max() < 0.05 * moved
    # the float32 states continue as torch's
    torch.testing.assert_close(params[1].detach(), refs[1].detach(), rtol=1e-5, atol=1e-6)


def test_a_bitsandbytes_state_dict_loads_only_into_adam():
    _, params, sd = bnb_state_dict("AdamW8bit")
    opt = lrfast.torch.SGD(clones(params), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="loads into lrfast.torch.Adam or AdamW .* not SGD"):
        opt.load_state_dict(sd)
    assert not opt.state


def nested(sd, j=0):
    return sd["state"][j]["__bnb_optimizer_quant_state__"]


@pytest.mark.parametrize("change, error, match", [
    (lambda sd: nested(sd)["qmap1"].mul_(0.5), ValueError,
     "state 0: qmap1 is not bitsandbytes' signed dynamic map"),
    (lambda sd: nested(sd).update(qmap2=nested(sd)["qmap1"]), ValueError,
     "state 0: qmap2 is not bitsandbytes' unsigned dynamic map"),
    (lambda sd: nested(sd).update(absmax2=nested(sd)["absmax2"][:-1]), ValueError,
     "state 0: absmax2 is torch.float32 of shape \\(31,\\); state2's 8192 codes in blocks of "
     "256 need 32"),
    (lambda sd: nested(sd).pop("absmax1"), ValueError, "state 0: an 8-bit state1 needs tensors"),
    (lambda sd: nested(sd).pop("state2"), ValueError, "state 0: bitsandbytes' Adam keeps tensors"),
    (lambda sd: nested(sd).update(state2=nested(sd)["state2"][:1]), ValueError,
     "state 0: state1 of shape \\(64, 128\\) and state2 of shape \\(1, 128\\)"),
    (lambda sd: nested(sd).update(state2=nested(sd)["state2"].float()), TypeError,
     "state 0: state1 of torch.uint8 and state2 of torch.float32; bitsandbytes keeps both"),
    (lambda sd: sd["param_groups"][0].update(betas=(0.9, 0.999, 0.9999)), ValueError,
     "param group 0: betas .*AdEMAMix"),
], ids=["qmap1", "qmap2", "absmax-size", "no-absmax", "no-state2", "shapes", "dtypes", "ademamix"])
def test_a_bad_bitsandbytes_state_is_named_and_nothing_changes(change, error, match):
    _, params, sd = bnb_state_dict("AdamW8bit")
    change(sd)
    opt = lrfast.torch.AdamW(clones(params), lr=1e-3, state_dtype="q8")
    groups = [dict(group) for group in opt.param_groups]
    with pytest.raises(error, match=match):
        opt.load_state_dict(sd)
    assert not opt.state and len(opt.param_groups) == len(groups)
    for group, before in zip(opt.param_groups, groups):
        assert group.keys() == before.keys()
        assert all(group[k] is before[k] for k in group)


def test_an_unstepped_bitsandbytes_state_dict_loads_as_one():
    """No state yet: the groups alone (AdEMAMix-era keys) say it is bitsandbytes'."""
    _, params, sd = bnb_state_dict("Adam8bit", steps=0)
    opt = lrfast.torch.Adam(clones(params), state_dtype="q8")
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True
    assert "t_beta3" not in opt.param_groups[0]
