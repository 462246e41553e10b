"""lrfast.torch with bfloat16 models and state_dtype None, "float32",
"bfloat16" or "q8": the classes against the step functions called by hand and
against lrfast.reference, stochastic rounding's seeds, torch.save/torch.load
checkpoints that resume bit-identically, a bfloat16 model that trains with a
one-line change, and the checks of the new arguments.

Tests that step with q8 states or stochastic_rounding=True need the q8 and
stochastic-rounding kernels; until they land those fail with a TypeError from
the step functions."""

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

import lrfast  # noqa: E402
import lrfast.torch  # noqa: E402
from lrfast import reference  # noqa: E402
from lrfast.precision import (Q4State, Q8State, mix_seed, unpack_nibbles,  # noqa: E402
                              zeros_state)
from lowp_states import assert_same_state, bits, fill_state  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
STATE_DTYPES = [None, "float32", "bfloat16", "q8", "q4"]
STEPS = 4
# lrfast.torch's state keys and the step functions' state arguments
KEYS = {"momentum_buffer": "momentum_buffers", "exp_avg": "exp_avgs", "exp_avg_sq": "exp_avg_sqs",
        "max_exp_avg_sq": "max_exp_avg_sqs", "square_avg": "square_avgs", "grad_avg": "grad_avgs",
        "sum": "state_sums", "acc_delta": "acc_deltas"}
SIGNED = {"momentum_buffers", "exp_avgs", "grad_avgs"}

OPTIMIZERS = {
    "SGD": (dict(lr=0.05, momentum=0.9), "sgd_step", ("momentum_buffers",)),
    "Adam": (dict(lr=1e-2, amsgrad=True, weight_decay=0.1), "adam_step",
             ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")),
    "AdamW": (dict(lr=1e-2, amsgrad=True), "adamw_step",
              ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")),
    "RMSprop": (dict(lr=1e-2, momentum=0.9, centered=True), "rmsprop_step",
                ("square_avgs", "momentum_buffers", "grad_avgs")),
    "Adagrad": (dict(lr=0.1, initial_accumulator_value=0.1), "adagrad_step", ("state_sums",)),
    "Adadelta": (dict(), "adadelta_step", ("square_avgs", "acc_deltas")),
}
TAKES_STEP = {"SGD", "Adam", "AdamW", "Adagrad"}


class Net(torch.nn.Module):
    """A weight of 5120 elements (q8 states) and three tensors under 4096 (float32 ones)."""

    def __init__(self, dtype=torch.bfloat16):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(64, 80, dtype=dtype)
        self.b = torch.nn.Linear(80, 3, dtype=dtype)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def set_grads(model, step):
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=g) + 0.1).to(p.dtype)


def numpy(t):
    """A NumPy copy of a tensor (bfloat16 through ml_dtypes)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BF16).copy()
    return t.numpy().copy()


def torch_states(opt, p, names):
    """``p``'s states in opt as step-function states (copies)."""
    state, out = opt.state[p], {}
    for key, name in KEYS.items():
        if name not in names:
            continue
        if f"{key}_shape" in state:
            out[name] = Q4State(numpy(state[f"{key}_codes"]), numpy(state[f"{key}_absmax"]),
                                state[f"{key}_shape"], state[f"{key}_signed"])
        elif f"{key}_codes" in state:
            out[name] = Q8State(numpy(state[f"{key}_codes"]), numpy(state[f"{key}_absmax"]),
                                state[f"{key}_signed"])
        else:
            out[name] = numpy(state[key])
    return out




def hand_made_states(params, names, state_dtype, start):
    states = {name: [zeros_state(p, state_dtype, signed=name in SIGNED) for p in params]
              for name in names}
    for s in states.get("state_sums", []):  # Adagrad starts at initial_accumulator_value
        fill_state(s, start)
    return states


def call(fn, name, params, grads, states, step, **rounding):
    hp, _, order = OPTIMIZERS[name]
    hp = {k: v for k, v in hp.items() if k != "initial_accumulator_value"}
    if name in TAKES_STEP:
        hp["step"] = step
    fn(params, grads, *(states.get(s) for s in order), **hp, **rounding)


# ------------------------------------------------------------ against the steps


def check_against_steps(name, state_dtype, stochastic_rounding=False, seed=0):
    """The torch class against the step function by hand (bitwise, the whole
    run) and against lrfast.reference from the class's own state at each
    step (bitwise for round-to-nearest arrays; q8 codes >= 99% exact, none
    more than one off)."""
    hp, fn, order = OPTIMIZERS[name]
    model = Net()
    opt = getattr(lrfast.torch, name)(model.parameters(), **hp, state_dtype=state_dtype,
                                      stochastic_rounding=stochastic_rounding, seed=seed)
    params = [numpy(p) for p in model.parameters()]
    names = [s for s in order if s != "momentum_buffers" or hp.get("momentum")]
    by_hand = hand_made_states(params, names, state_dtype, hp.get("initial_accumulator_value", 0))
    for step in range(1, STEPS + 1):
        set_grads(model, step)
        grads = [numpy(p.grad) for p in model.parameters()]
        rounding = ({"stochastic_rounding": True, "seed": mix_seed(seed, step - 1, 0, 0)}
                    if stochastic_rounding else {})
        call(getattr(lrfast, fn), name, params, grads, by_hand, step, **rounding)
        ref_params = [numpy(p) for p in model.parameters()]
        if step == 1:  # the class makes its states at its first step, from the start values
            ref_states = hand_made_states(ref_params, names, state_dtype,
                                          hp.get("initial_accumulator_value", 0))
        else:
            ref_states = {n: [torch_states(opt, p, names)[n] for p in model.parameters()]
                          for n in names}
        call(getattr(reference, fn), name, ref_params, grads, ref_states, step, **rounding)
        opt.step()
        for j, p in enumerate(model.parameters()):
            assert_same_state(numpy(p), params[j], f"step {step}: by hand, params[{j}]")
            assert_same_state(numpy(p), ref_params[j], f"step {step}: reference, params[{j}]")
            got = torch_states(opt, p, names)
            for n in names:
                assert_same_state(got[n], by_hand[n][j], f"step {step}: by hand, {n}[{j}]")
                if isinstance(got[n], (Q8State, Q4State)):
                    a, b = (unpack_nibbles(x.codes, 2 * x.codes.size) if isinstance(x, Q4State)
                            else x.codes for x in (got[n], ref_states[n][j]))
                    diff = np.abs(a.astype(int) - b.astype(int))
                    assert diff.max() <= 1 and (diff == 0).mean() >= 0.99, f"{n}[{j}]"
                else:
                    assert_same_state(got[n], ref_states[n][j], f"step {step}: reference {n}[{j}]")


@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_matches_step_functions_and_reference(name, state_dtype):
    check_against_steps(name, state_dtype)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_stochastic_rounding_passes_the_mixed_seed(name):
    check_against_steps(name, None, stochastic_rounding=True, seed=2**64 - 2)


def test_q8_state_format():
    model = Net()
    opt = lrfast.torch.AdamW(model.parameters(), state_dtype="q8")
    set_grads(model, 1)
    opt.step()
    big, small = opt.state[model.a.weight], opt.state[model.a.bias]
    assert set(big) == {"step", "exp_avg_codes", "exp_avg_absmax", "exp_avg_signed",
                        "exp_avg_sq_codes", "exp_avg_sq_absmax", "exp_avg_sq_signed"}
    assert big["exp_avg_codes"].dtype == torch.uint8 and big["exp_avg_codes"].shape == (80, 64)
    assert big["exp_avg_absmax"].dtype == torch.float32 and big["exp_avg_absmax"].shape == (20,)
    assert big["exp_avg_signed"] is True and big["exp_avg_sq_signed"] is False
    assert set(small) == {"step", "exp_avg", "exp_avg_sq"}
    assert small["exp_avg"].dtype == torch.float32  # too small to quantize


def test_float_state_dtypes_keep_torchs_keys():
    for state_dtype, dtype in ((None, torch.bfloat16), ("float32", torch.float32),
                               ("bfloat16", torch.bfloat16)):
        model = Net()
        opt = lrfast.torch.Adam(model.parameters(), state_dtype=state_dtype)
        set_grads(model, 1)
        opt.step()
        state = opt.state[model.a.weight]
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == dtype


@pytest.mark.parametrize("state_dtype", ["bfloat16", "q8", "q4"])
def test_a_step_moves_the_version_of_every_tensor_it_writes(state_dtype):
    model = Net()
    opt = lrfast.torch.Adam(model.parameters(), state_dtype=state_dtype)
    set_grads(model, 1)
    opt.step()
    tensors = [t for p in model.parameters() for t in [p, *opt.state[p].values()]
               if isinstance(t, torch.Tensor)]
    versions = [t._version for t in tensors]
    set_grads(model, 2)
    opt.step()
    assert all(t._version > v for t, v in zip(tensors, versions))


# ------------------------------------------------------------ stochastic rounding


def train_sr(seed, steps=3):
    model = Net()
    opt = lrfast.torch.RMSprop(model.parameters(), lr=1e-2, stochastic_rounding=True, seed=seed)
    for step in range(1, steps + 1):
        set_grads(model, step)
        opt.step()
    return [numpy(p) for p in model.parameters()]


def test_stochastic_rounding_is_reproducible_and_moves_with_the_seed():
    first, again, other = train_sr(5), train_sr(5), train_sr(6)
    for a, b in zip(first, again):
        assert_same_state(a, b, "same seed")
    assert sum(int((bits(a) != bits(b)).sum()) for a, b in zip(first, other)) > 100


# ------------------------------------------------------------ checkpoints


def train(model, opt, first, last):
    for step in range(first, last + 1):
        set_grads(model, step)
        opt.step()


@pytest.mark.parametrize(("model_dtype", "state_dtype", "stochastic_rounding"), [
    (torch.bfloat16, "float32", False), (torch.float32, "bfloat16", False),
    (torch.bfloat16, "q8", False), (torch.float32, "q8", False), (torch.bfloat16, None, True)])
@pytest.mark.parametrize("name", ["AdamW", "SGD", "Adagrad"])
def test_torch_save_load_continue_is_bit_identical(name, model_dtype, state_dtype,
                                                   stochastic_rounding):
    hp = OPTIMIZERS[name][0]
    kw = dict(hp, state_dtype=state_dtype, stochastic_rounding=stochastic_rounding, seed=9)
    cls = getattr(lrfast.torch, name)
    straight = Net(model_dtype)
    straight_opt = cls(straight.parameters(), **kw)
    train(straight, straight_opt, 1, 5)

    model = Net(model_dtype)
    opt = cls(model.parameters(), **kw)
    train(model, opt, 1, 2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    resumed = Net(model_dtype)
    resumed.load_state_dict(checkpoint["model"])
    # constructed with torch's defaults: the param groups bring state_dtype,
    # stochastic_rounding and seed, the states their dtypes
    resumed_opt = cls(resumed.parameters(), **hp)
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    train(resumed, resumed_opt, 3, 5)

    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert_same_state(numpy(p), numpy(q), "params")
        a, b = resumed_opt.state[p], straight_opt.state[q]
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(b[key], torch.Tensor):
                assert a[key].dtype == b[key].dtype, key
                assert_same_state(numpy(a[key]), numpy(b[key]), key)
            else:
                assert a[key] == b[key], key


def test_loading_restores_state_dtypes_torch_would_cast():
    """torch.optim.Optimizer.load_state_dict casts states to the parameter's
    dtype: a float32 state of a bfloat16 model, and q8's uint8 codes, keep
    theirs here (without a step: no q8 kernel needed)."""
    model = Net()
    opt = lrfast.torch.Adam(model.parameters(), state_dtype="q8")
    opt2 = lrfast.torch.Adam(model.parameters(), state_dtype="float32")
    for o in (opt, opt2):  # the states a first step would make, without the step
        for p in model.parameters():
            o._init_state(p, o.param_groups[0], o._kernel(o.param_groups[0]),
                          ("exp_avgs", "exp_avg_sqs"), "")
    weight = model.a.weight
    opt.state[weight]["exp_avg_codes"].random_(0, 256)
    opt.state[weight]["exp_avg_absmax"].uniform_(0, 1)
    for o in (opt, opt2):
        buffer = io.BytesIO()
        torch.save(o.state_dict(), buffer)
        buffer.seek(0)
        fresh = lrfast.torch.Adam(model.parameters())
        fresh.load_state_dict(torch.load(buffer))
        for p in model.parameters():
            for key, value in o.state[p].items():
                if isinstance(value, torch.Tensor):
                    assert fresh.state[p][key].dtype == value.dtype, key
                    assert torch.equal(fresh.state[p][key], value), key
                else:
                    assert fresh.state[p][key] == value


# ------------------------------------------------------------ a bfloat16 model trains


def test_a_bfloat16_model_trains_with_a_one_line_change():
    torch.manual_seed(1)
    x = torch.randn(256, 64)
    y = torch.tanh(x @ torch.randn(64, 3) / 8)
    model = Net().to(torch.bfloat16)
    optimizer = lrfast.torch.AdamW(model.parameters(), lr=1e-2)  # the one line
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x.bfloat16()), y.bfloat16())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert losses[-1] < 0.3 * losses[0], losses


# ------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(("kw", "error", "match"), [
    (dict(state_dtype="int8"), ValueError, "state_dtype.*'int8'"),
    (dict(state_dtype=3), TypeError, "state_dtype"),
    (dict(stochastic_rounding=1), TypeError, "stochastic_rounding must be a bool"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(seed=0.5), TypeError, "seed"),
])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bad_arguments_raise_clear_errors(name, kw, error, match):
    with pytest.raises(error, match=match):
        getattr(lrfast.torch, name)(Net().parameters(), **kw)


def test_bad_options_or_states_found_at_a_step_write_nothing():
    model = Net()
    opt = lrfast.torch.Adam([{"params": model.a.parameters()}, {"params": model.b.parameters()}],
                            lr=0.1, state_dtype="bfloat16")
    train(model, opt, 1, 1)

    def snapshot():
        return [numpy(t) for p in model.parameters()
                for t in [p, opt.state[p]["exp_avg"], opt.state[p]["step"]]]

    before = snapshot()
    opt.param_groups[1]["state_dtype"] = "int8"
    with pytest.raises(ValueError, match="state_dtype"):
        train(model, opt, 2, 2)
    opt.param_groups[1]["state_dtype"] = "bfloat16"
    for bad, error, match in [
            (torch.zeros(3, 80, dtype=torch.float64), TypeError,
             "parameter 0.*'exp_avg' has dtype torch.float64"),
            (torch.zeros(80, 3, dtype=torch.bfloat16), ValueError,
             "'exp_avg' must be a tensor of shape \\(3, 80\\)")]:
        sd = opt.state_dict()  # state tensors are replaced through load_state_dict
        sd["state"][2] = {**sd["state"][2], "exp_avg": bad}  # model.b.weight's
        opt.load_state_dict(sd)
        with pytest.raises(error, match=match):
            train(model, opt, 2, 2)
    after = snapshot()
    for a, b in zip(before[:6], after[:6]):  # the first group's
        assert_same_state(a, b, "written")


def test_q4_state_entries_and_a_torchao_adamw4bit_state_dict_loads():
    """lrfast.torch keeps a q4 state as flat codes (torchao's layout), absmax per
    128, signed and shape; torchao's AdamW4bit state dict loads into AdamW(q4)
    with moments that dequantize to torchao's own, and training goes on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torchao_optim = pytest.importorskip("torchao.optim")
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 10))
        x, y = torch.randn(32, 128), torch.randint(0, 10, (32,))
        theirs = torchao_optim.AdamW4bit(model.parameters(), lr=1e-3)
        for _ in range(3):
            theirs.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            theirs.step()
        buffer = io.BytesIO()
        torch.save(theirs.state_dict(), buffer)
        buffer.seek(0)
        state_dict = torch.load(buffer, weights_only=False)
        ours = lrfast.torch.AdamW(model.parameters(), lr=1e-3, state_dtype="q4")
        ours.load_state_dict(state_dict)
        weight = model[0].weight
        state = ours.state[weight]
        assert state["exp_avg_codes"].shape == (4096,) and state["exp_avg_absmax"].shape == (64,)
        assert state["exp_avg_shape"] == (64, 128) and state["exp_avg_signed"] is True
        assert state["exp_avg_sq_signed"] is False
        for key in ("exp_avg", "exp_avg_sq"):
            got = Q4State(numpy(state[f"{key}_codes"]), numpy(state[f"{key}_absmax"]),
                          state[f"{key}_shape"], state[f"{key}_signed"]).dequantize()
            np.testing.assert_array_equal(got, theirs.state[weight][key].dequantize().numpy())
        before = weight.detach().clone()
        for _ in range(3):
            ours.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            ours.step()
        assert int(state["step"]) == 6 and not torch.equal(before, weight.detach())
        assert torch.isfinite(weight).all()
