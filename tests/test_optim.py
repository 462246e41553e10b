"""lrfast.optim: bitwise equal to the step functions it drives, options
(schedules, plateau, clipping, loss scale, skipping), checks before writes,
and checkpoints that resume bit-identically."""

import os
import subprocess
import sys

import numpy as np
import pytest

import lrfast
import lrfast.optim
from lrfast.schedules import ReduceLROnPlateau, cosine_decay, warmup
from cases import TORCH_CASES, call_step, gradients

CASE_TABLE = TORCH_CASES  # the cases whose classes take their steps' keywords

# float32 and float64 parameters in one group: one call takes both
SHAPES = [(3, 5), (17,), (40,)]
DTYPES = [np.float32, np.float64, np.float32]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(d) for s, d in zip(SHAPES, DTYPES)]


def grads_for(step, seed=0):
    return [g.astype(d) for g, d in zip(gradients(SHAPES, np.float64, step, seed), DTYPES)]


def optimizer(case, params, **kw):
    return getattr(lrfast.optim, case.torch_name)(params, **kw)


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_matches_step_functions_bitwise(case, hp):
    params, ref = make_params(), make_params()
    opt = optimizer(case, params, **hp)
    states = {name: [np.zeros_like(p) for p in ref] for name in case.states_for(hp)}
    fn = getattr(lrfast, case.step_fn)
    for step in range(1, 6):
        grads = grads_for(step)
        assert opt.step(grads) is True
        call_step(fn, case, hp, ref, grads_for(step), states, step)
    assert opt.step_count == 5
    assert_same(params, ref)
    assert opt.state[0].keys() == states.keys()
    for name in states:
        assert_same(opt.state[0][name], states[name])


def test_options_fuse_into_the_step_call():
    """Two groups, a schedule, max_grad_norm and grad_scale: one global_norm
    call, then per group a step with grad_scale = scale * clip coefficient."""
    sched = warmup(cosine_decay(0.1, 20), 3)
    params, ref = make_params(), make_params()
    opt = lrfast.optim.Adam([{"params": params[:2], "lr": sched},
                             {"params": params[2:], "lr": 0.01, "betas": (0.5, 0.9)}],
                            max_grad_norm=0.5, grad_scale=0.25, weight_decay=0.1)
    states = [{n: [np.zeros_like(p) for p in ps] for n in ("exp_avgs", "exp_avg_sqs")}
              for ps in (ref[:2], ref[2:])]
    for step in range(1, 8):
        grads = grads_for(step)
        before = [g.copy() for g in grads]
        assert opt.lrs == [sched(step - 1), 0.01]
        opt.step(grads)
        assert_same(grads, before)  # never written
        norm = lrfast.global_norm(grads) * 0.25
        assert opt.last_grad_norm == norm
        scale = 0.25 * lrfast.clip_coefficient(norm, 0.5)
        lrfast.adam_step(ref[:2], grads[:2], *states[0].values(), lr=sched(step - 1), step=step,
                         weight_decay=0.1, grad_scale=scale)
        lrfast.adam_step(ref[2:], grads[2:], *states[1].values(), lr=0.01, step=step,
                         betas=(0.5, 0.9), weight_decay=0.1, grad_scale=scale)
    assert_same(params, ref)


def test_clip_value_writes_the_gradients():
    params, ref = make_params(), make_params()
    opt = lrfast.optim.SGD(params, lr=0.1, momentum=0.9, clip_value=0.3, grad_scale=2.0)
    buffers = [np.zeros_like(p) for p in ref]
    for step in range(1, 4):
        grads = grads_for(step)
        expected = [np.clip(g, -0.15, 0.15) for g in grads]  # 0.3 after the scale of 2
        opt.step(grads)
        assert_same(grads, expected)
        lrfast.sgd_step(ref, expected, buffers, lr=0.1, step=step, momentum=0.9, grad_scale=2.0)
    assert_same(params, ref)


def test_plateau_multiplies_every_group_rate():
    params = make_params()
    plateau = ReduceLROnPlateau(factor=0.5, patience=1)
    opt = lrfast.optim.RMSprop([{"params": params[:1]}, {"params": params[1:], "lr": 0.1}],
                               lr=cosine_decay(0.02, 10), plateau=plateau)
    rates = [opt.report(1.0), opt.report(1.0), opt.report(1.0)]
    assert rates == [0.02, 0.02, 0.01]
    assert opt.lrs == [0.01, 0.05]
    opt.step(grads_for(1))
    assert opt.lr == plateau.rate(cosine_decay(0.02, 10)(1))
    with pytest.raises(RuntimeError, match="plateau"):
        lrfast.optim.SGD(make_params()).report(1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_skip_nonfinite_changes_nothing(bad):
    params, ref = make_params(), make_params()
    opt = lrfast.optim.Adam(params, lr=0.1, amsgrad=True, skip_nonfinite=True)
    skipped = lrfast.optim.Adam(ref, lr=0.1, amsgrad=True, skip_nonfinite=True)
    opt.step(grads_for(1))
    skipped.step(grads_for(1))
    before = skipped.state_dict()
    snapshot = [p.copy() for p in ref]
    grads = grads_for(2)
    grads[1][4] = bad
    assert skipped.step(grads) is False
    assert skipped.skipped_steps == 1 and skipped.step_count == 1
    assert not np.isfinite(skipped.last_grad_norm)
    assert_same(ref, snapshot)
    after = skipped.state_dict()
    for name in before["state"][0]:
        assert_same(after["state"][0][name], before["state"][0][name])
    for step in (2, 3):  # then training goes on as if the bad step never came
        opt.step(grads_for(step))
        assert skipped.step(grads_for(step)) is True
    assert_same(params, ref)


def test_a_bad_gradient_leaves_everything_as_it_was():
    params = make_params()
    opt = lrfast.optim.Adam([{"params": params[:2]}, {"params": params[2:]}], clip_value=0.1)
    snapshot = [p.copy() for p in params]
    grads = grads_for(1)
    grads[2] = grads[2][:-1]  # wrong shape, in the second group
    originals = [g.copy() for g in grads]
    with pytest.raises(ValueError, match=r"grads\[2\]"):
        opt.step(grads)
    assert_same(params, snapshot)
    assert_same(grads, originals)  # clip_value did not run either
    assert opt.step_count == 0
    with pytest.raises(ValueError, match="3 parameters"):
        opt.step(grads_for(1)[:2])
    opt.param_groups[1]["betas"] = (1.5, 0.9)  # an invalid hyperparameter, second group
    with pytest.raises(ValueError, match="betas"):
        opt.step(grads_for(1))
    assert_same(params, snapshot)


def test_constructor_checks():
    params = make_params()
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        lrfast.optim.Adam([{"params": params, "momentum": 0.9}])
    with pytest.raises(ValueError, match="not both"):
        lrfast.optim.SGD(params, max_grad_norm=1.0, clip_value=1.0)
    with pytest.raises(ValueError, match="more than once"):
        lrfast.optim.SGD([{"params": params}, {"params": params[:1]}])
    with pytest.raises(ValueError, match="lr"):
        lrfast.optim.SGD(params, lr=-1.0)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        lrfast.optim.Adagrad(params, initial_accumulator_value=-1.0)
    with pytest.raises(ValueError, match="grad_scale"):
        lrfast.optim.SGD(params, grad_scale=0.0)
    with pytest.raises(TypeError, match="NumPy array"):
        lrfast.optim.SGD([[1.0, 2.0]])
    with pytest.raises(TypeError, match="dtype"):
        lrfast.optim.SGD([np.zeros(3, np.int32)])


def test_adagrad_state_starts_at_initial_accumulator_value():
    opt = lrfast.optim.Adagrad(make_params(), initial_accumulator_value=0.25)
    for a, p in zip(opt.state[0]["state_sums"], opt.param_groups[0]["params"]):
        assert a.dtype == p.dtype
        assert (a == 0.25).all()


def run(opt, first, last):
    for step in range(first, last + 1):
        opt.step(grads_for(step))
        if opt.plateau is not None:
            opt.report(float(step % 3))


def test_save_load_continue_is_bit_identical(case, hp, tmp_path):
    def make(params):
        kw = dict(hp, lr=warmup(cosine_decay(hp.get("lr", 0.01), 10), 2))
        return optimizer(case, params, **kw, max_grad_norm=2.0,
                         plateau=ReduceLROnPlateau(patience=1, factor=0.5))

    params = make_params()
    straight = make(params)
    run(straight, 1, 6)

    params2 = make_params()
    first = make(params2)
    run(first, 1, 3)
    first.save(tmp_path / "opt.npz")
    resumed_params = [p.copy() for p in params2]
    resumed = optimizer(case, resumed_params, lr=0.5)  # constructed differently
    resumed.load(tmp_path / "opt.npz")
    assert resumed.state_dict()["param_groups"] == first.state_dict()["param_groups"]
    run(resumed, 4, 6)
    assert_same(resumed_params, params)
    assert resumed.step_count == 6 and resumed.lr == straight.lr
    assert resumed.plateau.state_dict() == straight.plateau.state_dict()
    for name in straight.state[0]:
        assert_same(resumed.state[0][name], straight.state[0][name])


def test_state_dict_round_trip_in_memory():
    params = make_params()
    opt = lrfast.optim.AdamW(params, lr=cosine_decay(0.1, 10), amsgrad=True)
    opt.step(grads_for(1))
    sd = opt.state_dict()
    opt.step(grads_for(2))  # the snapshot does not move
    other = lrfast.optim.AdamW([p.copy() for p in params])
    other.load_state_dict(sd)
    assert other.step_count == 1 and other.param_groups[0]["lr"] == cosine_decay(0.1, 10)
    assert not np.array_equal(sd["state"][0]["exp_avgs"][0], opt.state[0]["exp_avgs"][0])


def test_bad_checkpoints_raise_and_change_nothing(tmp_path):
    params = make_params()
    opt = lrfast.optim.Adam(params, lr=0.1)
    opt.step(grads_for(1))
    opt.save(tmp_path / "good.npz")
    opt.step(grads_for(2))
    before = opt.state_dict()

    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    (tmp_path / "text.npz").write_text("hello")
    for name in ("truncated", "foreign", "text"):
        with pytest.raises(ValueError, match="not a readable lrfast optimizer checkpoint"):
            opt.load(tmp_path / f"{name}.npz")
    with pytest.raises(ValueError, match="'Adam' cannot be loaded into SGD"):
        lrfast.optim.SGD(make_params()).load(tmp_path / "good.npz")
    with pytest.raises(ValueError, match="shape"):
        lrfast.optim.Adam([np.zeros((5, 3), np.float32), *make_params()[1:]]).load(
            tmp_path / "good.npz")
    with pytest.raises(ValueError, match="param groups"):
        lrfast.optim.Adam([{"params": params[:1]}, {"params": params[1:]}]).load(
            tmp_path / "good.npz")
    with pytest.raises(FileNotFoundError):
        opt.load(tmp_path / "missing.npz")

    after = opt.state_dict()
    assert after["step_count"] == before["step_count"] == 2
    for name in before["state"][0]:
        assert_same(after["state"][0][name], before["state"][0][name])


def test_importing_lrfast_optim_does_not_import_torch():
    code = "import sys, lrfast, lrfast.optim; assert 'torch' not in sys.modules, 'torch imported'"
    # cwd: the tests folder, where `import lrfast` finds the installed package
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   cwd=os.path.dirname(__file__))


def test_case_table_names_the_classes():
    for case in TORCH_CASES:
        cls = getattr(lrfast.optim, case.torch_name)
        assert cls.kernel.step is getattr(lrfast, case.step_fn)
        assert cls.kernel.states == case.states


# ------------------------------------------------------------ issue 10


F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_skip_nonfinite_sees_the_gradient_the_kernel_computes(name):
    """A float32 gradient times grad_scale that overflows float32 (where the
    kernels multiply) is skipped, though its float64 norm is finite."""
    params = [np.ones(4, np.float32), np.ones(3)]
    opt = getattr(lrfast.optim, name)(params, lr=0.1, grad_scale=1e30, skip_nonfinite=True)
    before = [p.copy() for p in params]
    grads = [np.full(4, 1e10, np.float32), np.ones(3)]
    assert opt.step(grads) is False
    assert opt.skipped_steps == 1 and opt.step_count == 0
    assert_same(params, before)
    # float64 gradients of 1e10 times 1e30 are finite where the kernel computes them
    opt = getattr(lrfast.optim, name)([np.ones(3)], lr=0.1, grad_scale=1e30, skip_nonfinite=True)
    assert opt.step([np.full(3, 1e10)]) is True


@pytest.mark.parametrize(("grad", "scale", "runs"), [
    (F32_MAX, 1.0, True),
    (F32_MAX, 1.0 + 2.0**-30, True),    # the scale rounds to 1 in float32
    (F32_MAX, 1.0 + 2.0**-23, False),   # one ulp above 1: the product overflows
    (2e38, 1.0, True),                  # 2-norm of four: 4e38 > F32_MAX; each one fits
    (1e-30, 1e38, True),
])
def test_skip_nonfinite_is_exact_at_the_float32_limit(grad, scale, runs):
    params = [np.zeros(4, np.float32)]
    opt = lrfast.optim.SGD(params, lr=1e-40, grad_scale=scale, skip_nonfinite=True)
    assert opt.step([np.full(4, grad, np.float32)]) is runs
    assert np.isfinite(params[0]).all()


def test_skip_nonfinite_with_clip_value_sees_the_clamped_gradient():
    params = [np.zeros(4, np.float32)]
    opt = lrfast.optim.SGD(params, lr=0.1, grad_scale=1e30, clip_value=1.0, skip_nonfinite=True)
    assert opt.step([np.full(4, 1e10, np.float32)]) is True  # clamped to 1e-30, times 1e30
    np.testing.assert_allclose(params[0], -0.1, rtol=1e-6)


def test_saves_from_two_threads_to_one_path(tmp_path):
    import threading

    path = tmp_path / "opt.npz"
    opts = [lrfast.optim.Adam(make_params(seed), lr=0.1) for seed in (1, 2)]
    for opt in opts:
        opt.step(grads_for(1))
    errors = []

    def save_often(opt):
        try:
            for _ in range(15):
                opt.save(path)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save_often, args=(opt,)) for opt in opts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert os.listdir(tmp_path) == ["opt.npz"]  # no temporary file left
    loaded = lrfast.optim.Adam(make_params(), lr=0.1)
    loaded.load(path)  # one of the two, whole
    assert any(np.array_equal(loaded.state[0]["exp_avgs"][0], o.state[0]["exp_avgs"][0])
               for o in opts)


def test_save_leaves_a_users_tmp_file_alone(tmp_path):
    (tmp_path / "opt.npz.tmp").write_text("mine")
    lrfast.optim.SGD(make_params()).save(tmp_path / "opt.npz")
    assert (tmp_path / "opt.npz.tmp").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["opt.npz", "opt.npz.tmp"]


def test_a_failed_save_keeps_the_old_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "opt.npz"
    opt = lrfast.optim.Adam(make_params(), lr=0.1)
    opt.step(grads_for(1))
    opt.save(path)
    good = path.read_bytes()
    opt.step(grads_for(2))

    def disk_full(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        opt.save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["opt.npz"]


def checkpoint_with(tmp_path, edit):
    """A good Adam checkpoint whose JSON meta went through ``edit``."""
    import json

    opt = lrfast.optim.Adam([{"params": make_params()[:2]}, {"params": make_params()[2:]}],
                            lr=0.1, plateau=ReduceLROnPlateau())
    opt.step(grads_for(1))
    opt.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as npz:
        members = {name: npz[name] for name in npz.files}
    meta = json.loads(members.pop("meta").item())
    edit(meta)
    np.savez(tmp_path / "bad.npz", meta=np.array(json.dumps(meta)), **members)
    return tmp_path / "bad.npz"


def _set(path, value):
    def edit(meta):
        *keys, last = path
        target = meta
        for key in keys:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return edit


@pytest.mark.parametrize(("edit", "field"), [
    (_set(["options"], [1.0, None, 1.0, False]), "options"),
    (_set(["options", "extra"], 1), "options.*extra"),
    (_set(["options", "grad_scale"], KeyError), "options.*grad_scale"),
    (_set(["options", "grad_scale"], "1"), "grad_scale"),
    (_set(["extra"], 1), "extra"),
    (_set(["step_count"], KeyError), "step_count"),
    (_set(["step_count"], 10**400), "step_count"),
    (_set(["param_groups", 1, "lr"], "0.1"), r"param_groups\[1\].*lr"),
    (_set(["param_groups", 0, "betas"], [0.9, 0.99, 0.5]), r"param_groups\[0\].*betas"),
    (_set(["param_groups", 0, "lr"], {"type": "cosine_decay", "lr": "x"}), r"param_groups\[0\]"),
    (_set(["param_groups", 0], [1, 2]), r"param_groups\[0\]"),
    (_set(["param_groups"], {"0": {}}), "param_groups"),
    (_set(["plateau", "factor"], "0.5"), "plateau.*factor"),
    (_set(["plateau"], [1]), "plateau"),
    (_set(["state", 0], ["exp_avgs"]), r"state\[0\]"),
    (_set(["state", 0, "exp_avgs"], "2"), r"state\[0\].*exp_avgs"),
    (_set(["last_grad_norm"], "big"), "last_grad_norm"),
])
def test_malformed_checkpoints_are_value_errors_naming_the_field(tmp_path, edit, field):
    bad = checkpoint_with(tmp_path, edit)
    opt = lrfast.optim.Adam([{"params": make_params(5)[:2]}, {"params": make_params(5)[2:]}])
    opt.step(grads_for(3))
    before = opt.state_dict()
    with pytest.raises(ValueError, match=field):
        opt.load(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"] and after["plateau"] is None
    assert after["step_count"] == 1 and after["options"] == before["options"]
    for group_before, group_after in zip(before["state"], after["state"]):
        for name in group_before:
            assert_same(group_after[name], group_before[name])


def test_a_member_that_claims_more_than_its_parameter_is_refused_unread(tmp_path, monkeypatch):
    """A 1 MB file whose member would inflate to 1.2 GB: its .npy header
    disagrees with the parameter's shape, so nothing past it is read."""
    import io
    import zipfile

    params = [np.zeros(3, np.float32)]
    opt = lrfast.optim.Adam(params)
    opt.step([np.ones(3, np.float32)])
    opt.save(tmp_path / "good.npz")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (300_000_000,)})
    with zipfile.ZipFile(tmp_path / "good.npz") as good, \
            zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as bomb:
        for info in good.infolist():
            data = good.read(info)
            if info.filename == "state/0/exp_avgs/0.npy":
                data = header.getvalue() + bytes(50_000_000)  # deflates to ~50 kB
            bomb.writestr(info.filename, data)
    assert os.path.getsize(tmp_path / "bomb.npz") < 1_000_000

    read = []
    original = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = original(self, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    with pytest.raises(ValueError, match=r"exp_avgs.*shape"):
        opt.load(tmp_path / "bomb.npz")
    assert sum(read) < 1_000_000
    assert opt.step_count == 1
