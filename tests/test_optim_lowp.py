"""lrfast.optim with bfloat16/float16 params and state_dtype None, "float32",
"bfloat16" or "q8": the classes against the step functions called by hand and
against lrfast.reference, stochastic rounding's seeds, checkpoints that resume
bit-identically, the checks of the new arguments, and the digits quality test.

Tests that step with q8 states or stochastic_rounding=True need the q8 and
stochastic-rounding kernels; until they land those fail with a TypeError from
the step functions."""

import json

import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")

import lrfast  # noqa: E402
import lrfast.optim  # noqa: E402
from lrfast import reference  # noqa: E402
from lrfast.precision import (Q4State, Q8State, mix_seed, unpack_nibbles,  # noqa: E402
                              zeros_state)
from lrfast.schedules import cosine_decay  # noqa: E402
from lowp_states import assert_same_state, bits, fill_state  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
# one tensor under q8's 4096-element floor (float32 states), two above it
SHAPES = [(3, 5), (4100,), (64, 80)]
STATE_DTYPES = [None, "float32", "bfloat16", "q8", "q4"]
STEPS = 4
SIGNED = {"momentum_buffers", "exp_avgs", "grad_avgs"}

# per optimizer: hyperparameters that use every state, and the step function
OPTIMIZERS = {
    "SGD": (dict(lr=0.05, momentum=0.9), "sgd_step"),
    "Adam": (dict(lr=1e-2, amsgrad=True, weight_decay=0.1), "adam_step"),
    "AdamW": (dict(lr=1e-2, amsgrad=True), "adamw_step"),
    "RMSprop": (dict(lr=1e-2, momentum=0.9, centered=True), "rmsprop_step"),
    "Adagrad": (dict(lr=0.1, initial_accumulator_value=0.1), "adagrad_step"),
    "Adadelta": (dict(), "adadelta_step"),
}


def make_params(dtype=BF16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def grads_for(params, step):
    """Gradients of the params' dtype, but float32 for the last tensor (allowed
    for 16-bit params)."""
    rng = np.random.default_rng((7, step))
    return [(rng.standard_normal(p.shape) + 0.1).astype(np.float32 if i == 2 else p.dtype)
            for i, p in enumerate(params)]




def assert_same_states(got, want):
    assert got.keys() == want.keys()
    for name in want:
        for j, (a, b) in enumerate(zip(got[name], want[name], strict=True)):
            assert_same_state(a, b, f"{name}[{j}]")


def hand_made_states(opt, params, state_dtype):
    """The states a user would make with lrfast.zeros_state."""
    states = {}
    for name in opt.state[0]:
        states[name] = [zeros_state(p, state_dtype, signed=name in SIGNED) for p in params]
    if "state_sums" in states:  # Adagrad starts at initial_accumulator_value
        start = opt.param_groups[0]["initial_accumulator_value"]
        for s in states["state_sums"]:
            fill_state(s, start)
    return states


def call(fn, opt, params, grads, states, step, **rounding):
    hp = opt.kernel.hparams(opt.param_groups[0])
    if opt.kernel.counts_steps:
        hp["step"] = step
    fn(params, grads, *(states.get(name) for name in opt.kernel.states), lr=opt.lr, **hp,
       **rounding)


# ------------------------------------------------------------ against the steps


@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_matches_step_functions_by_hand_bitwise(name, state_dtype):
    hp, fn = OPTIMIZERS[name]
    params, by_hand = make_params(), make_params()
    opt = getattr(lrfast.optim, name)(params, **hp, state_dtype=state_dtype)
    states = hand_made_states(opt, by_hand, state_dtype)
    assert_same_states(opt.state[0], states)  # the start, Adagrad's included
    for step in range(1, STEPS + 1):
        assert opt.step(grads_for(params, step)) is True
        call(getattr(lrfast, fn), opt, by_hand, grads_for(by_hand, step), states, step)
    for j, (p, q) in enumerate(zip(params, by_hand)):
        assert_same_state(p, q, f"params[{j}]")
    assert_same_states(opt.state[0], states)


def q8_codes_agree(got, want, what):
    """The conformance rule for q8 and q4: >= 99% of codes exact, none more than one off."""
    codes = [unpack_nibbles(x.codes, x.codes.size * 2) if isinstance(x, Q4State) else x.codes
             for x in (got, want)]
    diff = np.abs(codes[0].astype(np.int16) - codes[1].astype(np.int16))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.99, what


@pytest.mark.parametrize("state_dtype", STATE_DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_step_matches_the_reference(name, state_dtype):
    """Every step from the class's own params and states: lrfast.reference
    gives the same bits for round-to-nearest arrays, and q8 codes within the
    conformance rule (absmax from the same float32 maths: within an ulp)."""
    hp, fn = OPTIMIZERS[name]
    params = make_params()
    opt = getattr(lrfast.optim, name)(params, **hp, state_dtype=state_dtype)
    for step in range(1, STEPS + 1):
        grads = grads_for(params, step)
        ref_params = [p.copy() for p in params]
        ref_states = {k: [s.copy() for s in v] for k, v in opt.state[0].items()}
        call(getattr(reference, fn), opt, ref_params, grads, ref_states, step)
        opt.step(grads)
        for j, (p, q) in enumerate(zip(params, ref_params)):
            assert_same_state(p, q, f"step {step}: params[{j}]")
        for k in ref_states:
            for j, (s, r) in enumerate(zip(opt.state[0][k], ref_states[k])):
                if isinstance(r, (Q8State, Q4State)):
                    q8_codes_agree(s, r, f"step {step}: {k}[{j}]")
                    np.testing.assert_allclose(s.absmax, r.absmax, rtol=2**-23)
                else:
                    assert_same_state(s, r, f"step {step}: {k}[{j}]")


@pytest.mark.parametrize(("dtype", "state_dtype"), [
    (np.float16, None), (np.float16, "bfloat16"), (np.float64, "bfloat16"), (np.float64, "q8")])
def test_float16_and_float64_params(dtype, state_dtype):
    params, by_hand = make_params(dtype), make_params(dtype)
    opt = lrfast.optim.Adam(params, lr=1e-2, state_dtype=state_dtype)
    states = hand_made_states(opt, by_hand, state_dtype)
    for step in (1, 2):
        opt.step([g.astype(dtype) for g in grads_for(params, step)])
        call(lrfast.adam_step, opt, by_hand, [g.astype(dtype) for g in grads_for(params, step)],
             states, step)
    for p, q in zip(params, by_hand):
        assert_same_state(p, q, "params")
    assert_same_states(opt.state[0], states)


def test_state_dtypes_make_the_states_they_name():
    params = make_params()
    kinds = {}
    for state_dtype in STATE_DTYPES:
        opt = lrfast.optim.Adam(params, state_dtype=state_dtype)
        kinds[state_dtype] = [(type(s).__name__, getattr(s, "dtype", None), getattr(s, "signed", None))
                              for name in ("exp_avgs", "exp_avg_sqs") for s in opt.state[0][name]]
    assert [k[1] for k in kinds[None]] == [BF16] * 6
    assert [k[1] for k in kinds["float32"]] == [np.float32] * 6
    assert [k[1] for k in kinds["bfloat16"]] == [BF16] * 6
    # the tiny tensor keeps float32; exp_avgs signed, exp_avg_sqs unsigned
    assert kinds["q8"] == [("ndarray", np.float32, None), ("Q8State", None, True),
                           ("Q8State", None, True), ("ndarray", np.float32, None),
                           ("Q8State", None, False), ("Q8State", None, False)]
    sgd = lrfast.optim.SGD(params, momentum=0.9, state_dtype="q8")
    assert [getattr(s, "signed", None) for s in sgd.state[0]["momentum_buffers"]] == [None, True, True]


# ------------------------------------------------------------ stochastic rounding


def run_sr(name, seed, steps=3, **kw):
    hp, _ = OPTIMIZERS[name]
    params = make_params()
    opt = getattr(lrfast.optim, name)(params, **hp, stochastic_rounding=True, seed=seed, **kw)
    for step in range(1, steps + 1):
        opt.step(grads_for(params, step))
    return params


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_stochastic_rounding_passes_the_mixed_seed(name):
    """The update after k others passes seed=mix_seed(seed, k, 0, 0) to the
    step function of group 0, for every optimizer alike."""
    hp, fn = OPTIMIZERS[name]
    seed = 2**64 - 2
    params, by_hand = make_params(), make_params()
    opt = getattr(lrfast.optim, name)(params, **hp, stochastic_rounding=True, seed=seed)
    states = hand_made_states(opt, by_hand, None)
    for step in range(1, STEPS + 1):
        opt.step(grads_for(params, step))
        call(getattr(lrfast, fn), opt, by_hand, grads_for(by_hand, step), states, step,
             stochastic_rounding=True, seed=mix_seed(seed, step - 1, 0, 0))
    for j, (p, q) in enumerate(zip(params, by_hand)):
        assert_same_state(p, q, f"params[{j}]")
    assert_same_states(opt.state[0], states)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_stochastic_rounding_is_reproducible_and_moves_with_the_seed(name):
    first, again, other = run_sr(name, 5), run_sr(name, 5), run_sr(name, 6)
    nearest = make_params()
    opt = getattr(lrfast.optim, name)(nearest, **OPTIMIZERS[name][0])
    for step in range(1, 4):
        opt.step(grads_for(nearest, step))
    for a, b in zip(first, again):
        assert_same_state(a, b, "same seed")
    differ = sum(int((bits(a) != bits(b)).sum()) for a, b in zip(first, other))
    assert differ > 100, "another seed rounds differently"
    assert sum(int((bits(a) != bits(b)).sum()) for a, b in zip(first, nearest)) > 100


# ------------------------------------------------------------ checkpoints


def run(opt, params, first, last):
    for step in range(first, last + 1):
        opt.step(grads_for(params, step))


@pytest.mark.parametrize(("state_dtype", "stochastic_rounding"),
                         [("bfloat16", False), ("q8", False), ("q8", True), (None, True)])
@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "Adagrad"])
def test_save_load_continue_is_bit_identical(name, state_dtype, stochastic_rounding, tmp_path):
    hp, _ = OPTIMIZERS[name]
    kw = dict(hp, lr=cosine_decay(hp.get("lr", 0.01), 10), state_dtype=state_dtype,
              stochastic_rounding=stochastic_rounding, seed=11)
    cls = getattr(lrfast.optim, name)
    params = make_params()
    straight = cls(params, **kw)
    run(straight, params, 1, 5)

    params2 = make_params()
    first = cls(params2, **kw)
    run(first, params2, 1, 2)
    first.save(tmp_path / "opt.npz")
    resumed_params = [p.copy() for p in params2]
    resumed = cls(resumed_params)  # the checkpoint brings state_dtype, rounding and seed
    resumed.load(tmp_path / "opt.npz")
    assert (resumed.state_dtype, resumed.stochastic_rounding, resumed.seed) == (
        state_dtype, stochastic_rounding, 11)
    run(resumed, resumed_params, 3, 5)
    for j, (p, q) in enumerate(zip(resumed_params, params)):
        assert_same_state(p, q, f"params[{j}]")
    assert_same_states(resumed.state[0], straight.state[0])


def random_q8_optimizer(**kw):
    """An AdamW with q8 states filled with random codes and absmax (no step:
    checkpoints of q8 states need no q8 kernel)."""
    opt = lrfast.optim.AdamW(make_params(), state_dtype="q8", amsgrad=True, **kw)
    rng = np.random.default_rng(3)
    for states in opt.state[0].values():
        for s in states:
            if isinstance(s, Q8State):
                s.codes[...] = rng.integers(0, 256, s.codes.shape)
                s.absmax[...] = rng.random(s.absmax.shape)
            else:
                s[...] = rng.random(s.shape)
    opt.step_count = 3
    return opt


def test_q8_states_round_trip_through_state_dict_and_files(tmp_path):
    opt = random_q8_optimizer(seed=2**64 - 1)
    sd = opt.state_dict()
    assert isinstance(sd["state"][0]["exp_avgs"][1], Q8State)
    assert sd["state"][0]["exp_avgs"][1].codes is not opt.state[0]["exp_avgs"][1].codes
    fresh = lrfast.optim.AdamW(make_params())
    fresh.load_state_dict(sd)
    assert_same_states(fresh.state[0], opt.state[0])
    assert fresh.state[0]["exp_avgs"][1].codes is not sd["state"][0]["exp_avgs"][1].codes

    opt.save(tmp_path / "q8.npz")
    with np.load(tmp_path / "q8.npz") as npz:
        assert {"state/0/exp_avg_sqs/1/codes", "state/0/exp_avg_sqs/1/absmax",
                "state/0/exp_avg_sqs/0"} <= set(npz.files)
    from_file = lrfast.optim.AdamW(make_params())
    from_file.load(tmp_path / "q8.npz")
    assert_same_states(from_file.state[0], opt.state[0])
    assert (from_file.state_dtype, from_file.seed, from_file.step_count) == ("q8", 2**64 - 1, 3)


def test_bfloat16_states_round_trip_through_files(tmp_path):
    params = make_params()
    opt = lrfast.optim.Adam(params, lr=0.1)
    run(opt, params, 1, 2)
    opt.save(tmp_path / "bf16.npz")
    with np.load(tmp_path / "bf16.npz") as npz:  # bfloat16 travels as its bits
        assert npz["state/0/exp_avgs/0"].dtype == np.uint16
    other = lrfast.optim.Adam(make_params())
    other.load(tmp_path / "bf16.npz")
    assert other.state[0]["exp_avgs"][0].dtype == BF16
    assert_same_states(other.state[0], opt.state[0])


def rewrite(path, out, edit_meta=None, edit_members=None):
    with np.load(path) as npz:
        members = {name: npz[name] for name in npz.files}
    meta = json.loads(members.pop("meta").item())
    if edit_meta:
        edit_meta(meta)
    if edit_members:
        edit_members(members)
    np.savez(out, meta=np.array(json.dumps(meta)), **members)
    return out


def _drop(key):
    return lambda members: members.pop(key)


def _put(key, value):
    return lambda members: members.__setitem__(key, value)


@pytest.mark.parametrize(("edit_meta", "edit_members", "field"), [
    (None, _put("state/0/exp_avgs/1/codes", np.zeros(4099, np.uint8)), r"exp_avgs\[1\]\.codes"),
    (None, _put("state/0/exp_avgs/1/codes", np.zeros(4100, np.int8)), r"exp_avgs\[1\]\.codes"),
    (None, _put("state/0/exp_avgs/2/absmax", np.zeros(21, np.float32)), r"exp_avgs\[2\]\.absmax"),
    (None, _drop("state/0/exp_avgs/2/absmax"), "not a readable"),
    (None, _put("state/0/exp_avgs/0", np.zeros((3, 5), np.float64)), r"exp_avgs\[0\]"),
    (lambda m: m["options"].__setitem__("state_dtype", "int8"), None, "options.*state_dtype"),
    (lambda m: m["options"].__setitem__("state_dtype", "bfloat16"), None, r"exp_avgs\[0\]"),
    (lambda m: m["options"].__setitem__("seed", -1), None, "options.*seed"),
    (lambda m: m["options"].__setitem__("stochastic_rounding", 1), None,
     "options.*stochastic_rounding"),
])
def test_malformed_q8_checkpoints_raise_naming_the_field_and_change_nothing(
        tmp_path, edit_meta, edit_members, field):
    random_q8_optimizer().save(tmp_path / "good.npz")
    bad = rewrite(tmp_path / "good.npz", tmp_path / "bad.npz", edit_meta, edit_members)
    opt = lrfast.optim.AdamW(make_params(seed=1), state_dtype="bfloat16")
    before = opt.state_dict()
    with pytest.raises(ValueError, match=field):
        opt.load(bad)
    after = opt.state_dict()
    assert after["options"] == before["options"] and after["step_count"] == 0
    assert_same_states(after["state"][0], before["state"][0])


def test_state_dicts_with_mismatched_states_raise_and_change_nothing():
    good = random_q8_optimizer().state_dict()
    opt = lrfast.optim.AdamW(make_params(seed=1), state_dtype="q8", amsgrad=True)
    before = opt.state_dict()

    def edited(name, j, value):
        sd = {**good, "state": [{**good["state"][0], name: list(good["state"][0][name])}]}
        sd["state"][0][name][j] = value
        return sd

    q8 = good["state"][0]["exp_avg_sqs"][1]
    cases = [
        (edited("exp_avg_sqs", 1, Q8State(q8.codes.copy(), q8.absmax.copy(), True)),
         r"exp_avg_sqs\[1\].*signed=False"),
        (edited("exp_avgs", 1, np.zeros(4100, np.float32)), r"exp_avgs\[1\].*Q8State"),
        (edited("exp_avgs", 0, Q8State(np.zeros((3, 5), np.uint8), np.zeros(1, np.float32))),
         r"exp_avgs\[0\].*float32"),
        (edited("exp_avgs", 2, Q8State(np.zeros((80, 64), np.uint8), np.zeros(20, np.float32))),
         r"exp_avgs\[2\]\.codes.*shape"),
        ({**good, "options": {**good["options"], "state_dtype": "float16"}}, "state_dtype"),
    ]
    for sd, field in cases:
        with pytest.raises(ValueError, match=field):
            opt.load_state_dict(sd)
        after = opt.state_dict()
        assert after["options"] == before["options"]
        assert_same_states(after["state"][0], before["state"][0])


def test_checkpoints_from_before_low_precision_still_load():
    opt = lrfast.optim.Adam(make_params(dtype=np.float32), lr=0.1)
    sd = opt.state_dict()
    for key in ("state_dtype", "stochastic_rounding", "seed"):
        del sd["options"][key]
    with pytest.warns(UserWarning, match="changes nothing"):  # rounding float32 params
        other = lrfast.optim.Adam(make_params(dtype=np.float32), state_dtype="bfloat16",
                                  stochastic_rounding=True, seed=4)
    other.load_state_dict(sd)
    assert (other.state_dtype, other.stochastic_rounding, other.seed) == (None, False, 0)


# ------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(("kw", "error", "match"), [
    (dict(state_dtype="int8"), ValueError, "state_dtype.*'int8'"),
    (dict(state_dtype="float16"), ValueError, "state_dtype"),
    (dict(state_dtype=3), TypeError, "state_dtype"),
    (dict(stochastic_rounding="yes"), TypeError, "stochastic_rounding must be a bool"),
    (dict(seed=-1), ValueError, "seed must be an integer from 0 to 2\\*\\*64 - 1"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(seed=True), TypeError, "seed must be an int"),
])
def test_bad_arguments_raise_clear_errors(kw, error, match):
    with pytest.raises(error, match=match):
        lrfast.optim.AdamW(make_params(), **kw)


def test_a_bad_gradient_dtype_writes_nothing():
    params = make_params()
    opt = lrfast.optim.Adam(params, lr=0.1, state_dtype="bfloat16")
    before = [p.copy() for p in params]
    grads = grads_for(params, 1)
    grads[1] = grads[1].astype(np.float64)  # a float64 grad for a bfloat16 param
    with pytest.raises((TypeError, ValueError), match="grads"):
        opt.step(grads)
    for p, q in zip(params, before):
        assert_same_state(p, q, "param")
    assert opt.step_count == 0 and not any(s.any() for s in opt.state[0]["exp_avgs"])


# ------------------------------------------------------------ quality


def digits_val_loss(params_dtype, state_dtype, stochastic_rounding, seed, epochs, lr=2e-3):
    """Validation loss after training with params of ``params_dtype``; the
    forward and backward passes run in float32 on widened params (float32
    gradients, which 16-bit params take)."""
    from lrfast.examples.digits_mlp import MLP, load_digits

    data = load_digits(seed=0)
    model = MLP((64, 256, 256, 10), seed=seed)
    params = [p.astype(params_dtype) for p in model.params]
    opt = lrfast.optim.AdamW(params, lr=lr, weight_decay=1e-2, state_dtype=state_dtype,
                             stochastic_rounding=stochastic_rounding, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(data.y_train))
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            model.params = [p.astype(np.float32) for p in params]
            opt.step(model.loss_and_grads(data.x_train[batch], data.y_train[batch])[1])
    model.params = [p.astype(np.float32) for p in params]
    return model.evaluate(data.x_val, data.y_val)[0]


@pytest.mark.slow
def test_digits_quality_of_q8_states_and_bfloat16_with_stochastic_rounding():
    """AdamW on the digits MLP (64-256-256-10) at a small learning rate, where
    bfloat16 rounding matters: validation loss averaged over 5 seeds. q8 states end within 3% of
    float32 states; bfloat16 params with stochastic rounding within 5% of
    float32 params, while round to nearest, which drops updates under half
    an ulp, loses much more (~1.9x the loss when measured)."""
    pytest.importorskip("sklearn")
    seeds, epochs, lr = range(5), 8, 3e-4
    runs = {"fp32": (np.float32, None, False), "q8": (np.float32, "q8", False),
            "bf16+sr": (BF16, None, True), "bf16 nearest": (BF16, None, False)}
    mean = {label: np.mean([digits_val_loss(*args, seed, epochs, lr) for seed in seeds])
            for label, args in runs.items()}
    print({label: round(float(v), 4) for label, v in mean.items()})
    assert mean["q8"] <= 1.03 * mean["fp32"]
    assert mean["bf16+sr"] <= 1.05 * mean["fp32"]
    assert mean["bf16 nearest"] > 1.2 * mean["fp32"]
