"""The optimizer classes under hostile use (issue 19): stochastic-rounding
streams across groups and seeds, Prodigy after a non-finite gradient, errors
in a later param group before the first is written, threads, and the
arguments that used to escape as OverflowError or KeyError."""

import copy
import threading

import numpy as np
import pytest

import lrfast
import lrfast.optim as lo
from lrfast import _lowp
from lrfast.precision import Q8State, bfloat16, mix_seed

BF16 = bfloat16()


def snapshot(opt):
    """Everything a step may write in an lrfast.optim optimizer, copied."""
    params = [p.copy() for g in opt.param_groups for p in g["params"]]
    return params, copy.deepcopy(opt.state_dict())


def assert_unchanged(opt, before):
    params, sd = snapshot(opt)
    for p, q in zip(params, before[0]):
        np.testing.assert_array_equal(p.view(np.uint8), q.view(np.uint8))
    assert sd["step_count"] == before[1]["step_count"]
    assert sd["param_groups"] == before[1]["param_groups"]
    for a, b in zip(sd["state"], before[1]["state"]):
        assert a.keys() == b.keys()
        for name in a:
            for x, y in zip(a[name], b[name]):
                if isinstance(x, Q8State):
                    assert x.signed == y.signed
                    np.testing.assert_array_equal(x.codes, y.codes)
                    x, y = x.absmax, y.absmax
                np.testing.assert_array_equal(np.asarray(x).view(np.uint8),
                                              np.asarray(y).view(np.uint8))


# ----------------------------------------------- stochastic rounding's streams


def test_mix_seed_separates_neighbouring_seeds_and_counters():
    seeds = {mix_seed(s, k) for s in range(50) for k in range(50)}
    assert len(seeds) == 2500  # additive seeds would give 99 distinct values
    assert mix_seed(7, 1, 0, 0) != mix_seed(7, 1, 1, 0) != mix_seed(7, 1, 0, 1)
    with pytest.raises(ValueError, match="seed"):
        mix_seed(-1, 0)
    with pytest.raises(TypeError, match="counter"):
        mix_seed(1, 0.5)


def test_equal_bf16_params_in_two_groups_round_differently():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(4096).astype(BF16)
    params = [base.copy(), base.copy()]
    opt = lo.AdamW([{"params": [params[0]]}, {"params": [params[1]]}], lr=1e-3,
                   stochastic_rounding=True, seed=5)
    for _ in range(5):
        g = rng.standard_normal(4096).astype(np.float32)
        opt.step([g, g.copy()])
    differ = (params[0].view(np.uint16) != params[1].view(np.uint16)).mean()
    assert differ > 0.1, differ  # the same stream in both groups: 0


@pytest.mark.parametrize("name", ["Lion", "RMSprop", "Adadelta"])
def test_a_step_less_optimizer_at_seed_s_update_k_plus_1_is_not_seed_s_plus_1_update_k(name):
    """Update k + 1 of seed s and update k of seed s + 1 from identical
    inputs: additive seeds drew the same bits (the same params)."""
    rng = np.random.default_rng(1)
    start = rng.standard_normal(4096).astype(BF16)
    grads = [rng.standard_normal(4096).astype(np.float32) for _ in range(2)]
    kw = {"lr": 1e-2} if name != "Adadelta" else {"lr": 1.0}
    a, b = [start.copy()], [start.copy()]
    opt_a = getattr(lo, name)(a, **kw, stochastic_rounding=True, seed=10)
    opt_b = getattr(lo, name)(b, **kw, stochastic_rounding=True, seed=11)
    opt_a.step([grads[0]])
    a[0][...] = start  # the inputs of update 1 of seed 10 = those of update 0 of seed 11
    for arrays in opt_a.state[0].values():
        for x in arrays:
            x[...] = 0
    opt_a.step([grads[1]])
    opt_b.step([grads[1]])
    assert (a[0].view(np.uint16) != b[0].view(np.uint16)).mean() > 0.05


def test_the_classes_pass_the_documented_seed_per_group():
    assert _lowp.rounding(True, 3, 4, 1) == {"stochastic_rounding": True,
                                             "seed": mix_seed(3, 4, 1, 0)}
    assert _lowp.rounding(False, 3, 4, 1) == {}


# ------------------------------------------------------ Prodigy and bad grads


def prodigy(**kw):
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(5000).astype(np.float32),
              rng.standard_normal(300).astype(np.float32)]
    return params, lo.Prodigy([{"params": [params[0]]}, {"params": [params[1]]}], **kw)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_prodigy_refuses_a_non_finite_gradient_writes_nothing_and_goes_on(bad, tmp_path):
    params, opt = prodigy()
    rng = np.random.default_rng(3)
    clean = lambda: [rng.standard_normal(p.size).astype(np.float32) for p in params]  # noqa: E731
    opt.step(clean())
    grads = clean()
    grads[1][7] = bad
    before = snapshot(opt)
    with pytest.raises(ValueError, match="inf or NaN"):
        opt.step(grads)
    assert_unchanged(opt, before)
    for _ in range(3):
        opt.step(clean())
    assert all(np.isfinite(p).all() for p in params) and np.isfinite(opt.d)
    opt.save(tmp_path / "c.npz")
    again = lo.Prodigy([{"params": [params[0].copy()]}, {"params": [params[1].copy()]}])
    again.load(tmp_path / "c.npz")
    assert again.d == opt.d and again.step_count == 4


def test_prodigy_skip_nonfinite_skips_the_step():
    params, opt = prodigy(skip_nonfinite=True)
    grads = [np.ones(p.size, np.float32) for p in params]
    grads[0][0] = np.nan
    assert opt.step(grads) is False and opt.skipped_steps == 1
    assert opt.step([np.ones(p.size, np.float32) for p in params]) is True


# ------------------------------------------- errors in a later group, first


def two_groups(cls, **kw):
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(5000).astype(np.float32) for _ in range(2)]
    opt = cls([{"params": [params[0]]}, {"params": [params[1]]}], **kw)
    grads = [rng.standard_normal(5000).astype(np.float32) for _ in range(2)]
    opt.step(grads)
    return opt, grads


def test_prodigy_slice_p_changed_in_group_1_writes_nothing():
    opt, grads = two_groups(lo.Prodigy)
    opt.param_groups[1]["slice_p"] = 3
    before = snapshot(opt)
    with pytest.raises(ValueError, match="param group 1"):
        opt.step(grads)
    assert_unchanged(opt, before)


def test_a_q8_state_of_group_1_made_unsigned_in_memory_writes_nothing():
    opt, grads = two_groups(lo.AdamW, state_dtype="q8")
    opt.state[1]["exp_avgs"][0].signed = False
    before = snapshot(opt)
    with pytest.raises(ValueError, match=r"param group 1: .*exp_avgs\[0\].*unsigned"):
        opt.step(grads)
    assert_unchanged(opt, before)


@pytest.mark.parametrize("cls", [lo.ScheduleFreeAdamW, lo.ScheduleFreeSGD])
def test_schedulefree_group_scalars_stay_when_its_first_call_fails(cls):
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(5000).astype(np.float32) for _ in range(2)]
    opt = cls([{"params": [params[0]]}, {"params": [params[1]]}], lr=1e-3)
    opt.train()
    grads = [np.ones(5000, np.float32) for _ in range(2)]
    opt.step(grads)
    opt.state[0]["zs"][0] = opt.state[0]["zs"][0][:100]  # a z that no longer fits
    before = [dict(g, params=None) for g in opt.param_groups]
    with pytest.raises(ValueError):
        opt.step(grads)
    assert [dict(g, params=None) for g in opt.param_groups] == before


# --------------------------------------------------------------------- threads


def test_two_threads_stepping_make_as_many_steps_as_one_thread():
    rng = np.random.default_rng(6)
    start = rng.standard_normal(200_000).astype(np.float32)
    grads = [rng.standard_normal(200_000).astype(np.float32)]
    ref = [start.copy()]
    ref_opt = lo.Prodigy(ref)
    for _ in range(40):
        ref_opt.step(grads)
    params = [start.copy()]
    opt = lo.Prodigy(params)
    threads = [threading.Thread(target=lambda: [opt.step(grads) for _ in range(20)])
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert opt.step_count == 40 and opt.param_groups[0]["k"] == ref_opt.param_groups[0]["k"]
    np.testing.assert_array_equal(params[0], ref[0])


def test_save_while_another_thread_steps_writes_whole_steps(tmp_path):
    rng = np.random.default_rng(7)
    start = rng.standard_normal(300_000).astype(np.float32)
    grads = [rng.standard_normal(300_000).astype(np.float32)]
    ref_opt = lo.Adam([start.copy()], lr=1e-3)
    after = [copy.deepcopy(ref_opt.state_dict()["state"])]  # the states after n steps
    for _ in range(20):
        ref_opt.step(grads)
        after.append(copy.deepcopy(ref_opt.state_dict()["state"]))
    opt = lo.Adam([start.copy()], lr=1e-3)
    stepper = threading.Thread(target=lambda: [opt.step(grads) for _ in range(20)])
    stepper.start()
    paths = []
    for i in range(20):
        paths.append(tmp_path / f"{i}.npz")
        opt.save(paths[-1])
    stepper.join()
    for path in paths:
        loaded = lo.Adam([start.copy()], lr=1e-3)
        loaded.load(path)
        want = after[loaded.step_count]
        for name, arrays in loaded.state[0].items():
            np.testing.assert_array_equal(arrays[0], want[0][name][0])


def test_optimizers_copy_and_pickle_without_their_lock():
    import pickle

    opt = lo.SGD([np.ones(3, np.float32)], lr=0.1)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        clone.step([np.ones(3, np.float32)])
        assert clone.step_count == 1 and opt.step_count == 0


# ------------------------------------------------- arguments that escaped


@pytest.mark.parametrize("cls, kw", [
    (lo.ScheduleFreeSGD, dict(lr=1e200)),
    (lo.ScheduleFreeSGD, dict(lr=2.0, weight_lr_power=1e10)),
    (lo.ScheduleFreeAdamW, dict(weight_lr_power=1e10)),  # lr_max**1e10 underflows to 0
    (lo.ScheduleFreeSGD, dict(lr=0, weight_lr_power=-1)),
])
def test_schedulefree_weights_that_do_not_fit_a_float_are_value_errors(cls, kw):
    with pytest.raises(ValueError, match="weight_lr_power"):
        cls([np.zeros(3, np.float32)], **kw)


def test_schedulefree_r_that_overflows_later_is_a_value_error_with_nothing_written():
    p = [np.zeros(3, np.float32)]
    opt = lo.ScheduleFreeAdamW(p, r=2000)
    opt.train()
    opt.step([np.ones(3, np.float32)])
    before = snapshot(opt)
    with pytest.raises(ValueError, match="r=2000.*step 2"):
        opt.step([np.ones(3, np.float32)])
    assert_unchanged(opt, before)


def test_max_grad_norm_of_a_nan_gradient_names_the_norm_and_records_nothing():
    p = [np.zeros(3, np.float32)]
    opt = lo.AdamW(p, max_grad_norm=1.0)
    opt.step([np.ones(3, np.float32)])
    norm = opt.last_grad_norm
    before = snapshot(opt)
    with pytest.raises(ValueError, match="global norm is nan.*max_grad_norm"):
        opt.step([np.array([1, np.nan, 2], np.float32)])
    assert opt.last_grad_norm == norm
    assert_unchanged(opt, before)


@pytest.mark.parametrize("scale", [1e300, -1e39])
def test_grad_scale_beyond_float32_is_refused(scale):
    p, g, m, v = (np.zeros(5, np.float32) for _ in range(4))
    with pytest.raises(ValueError, match="grad_scale"):
        lrfast.adam_step(p, g, m, v, step=1, grad_scale=scale)
    with pytest.raises(ValueError, match="grad_scale"):
        lo.Adam([p], grad_scale=abs(scale))
    assert not m.any() and not p.any()
