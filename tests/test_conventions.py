"""What users of torch.optim and optax expect of lrfast.optim and
lrfast.torch: callable rates, add_param_group, a readable repr, dtypes as
state_dtype, a warning when stochastic rounding has nothing to round, and
``lrfast --version``."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

import lrfast
import lrfast.optim as lo
from lrfast.precision import Q8State, bfloat16
from lrfast.schedules import cosine_decay


def test_a_plain_callable_is_a_rate_schedule():
    p = [np.ones(3, np.float32)]
    opt = lo.SGD(p, lr=lambda t: 0.1 / (t + 1))
    for t in range(3):
        assert opt.lr == 0.1 / (t + 1)
        opt.step([np.ones(3, np.float32)])
    np.testing.assert_allclose(p[0], 1 - 0.1 * (1 + 1 / 2 + 1 / 3), rtol=1e-6)


def test_a_callable_may_return_a_0d_array_but_not_a_vector():
    opt = lo.SGD([np.ones(3, np.float32)], lr=lambda t: np.array(0.5))
    assert opt.lr == 0.5
    with pytest.raises(TypeError, match=r"lr\(0\) must return a real number"):
        lo.SGD([np.ones(3, np.float32)], lr=lambda t: np.ones(2))
    with pytest.raises(ValueError, match="lr"):
        lo.SGD([np.ones(3, np.float32)], lr=lambda t: -1.0)


def test_a_checkpoint_keeps_the_optimizers_own_callable(tmp_path):
    fn = lambda t: 1e-2  # noqa: E731
    opt = lo.Adam([np.ones(3, np.float32)], lr=fn)
    opt.step([np.ones(3, np.float32)])
    opt.save(tmp_path / "c.npz")
    again = lo.Adam([np.ones(3, np.float32)], lr=lambda t: 1e-3)
    again.load(tmp_path / "c.npz")
    assert again.step_count == 1 and again.lr == 1e-3
    with pytest.raises(ValueError, match="plain callable"):
        lo.Adam([np.ones(3, np.float32)], lr=1e-3).load(tmp_path / "c.npz")
    again.load_state_dict(opt.state_dict())
    assert again.lr == 1e-3


def test_add_param_group_checks_at_once_and_steps_the_new_group_last():
    a, b = np.ones(3, np.float32), np.ones(5, np.float32)
    opt = lo.AdamW([a], lr=1e-2)
    opt.step([np.ones(3, np.float32)])
    opt.add_param_group({"params": [b], "lr": cosine_decay(1e-2, 10), "weight_decay": 0.0})
    assert len(opt.state) == 2 and opt.state[1]["exp_avgs"][0].shape == (5,)
    opt.step([np.ones(3, np.float32), np.ones(5, np.float32)])
    assert (b < 1).all()
    for bad, error in (({"params": [a]}, ValueError), ({"params": [np.ones(2)], "lr": -1}, ValueError),
                       ({"params": [np.ones(2)], "momentum": 0.9}, TypeError), ([b], TypeError)):
        with pytest.raises(error):
            opt.add_param_group(bad)
    assert len(opt.param_groups) == 2


def test_add_param_group_shares_prodigys_estimate_and_schedule_free_mode():
    opt = lo.Prodigy([np.ones(3, np.float32)])
    opt.step([np.ones(3, np.float32)])
    opt.add_param_group({"params": [np.ones(4, np.float32)]})
    opt.step([np.ones(3, np.float32), np.ones(4, np.float32)])
    assert opt.param_groups[1]["d"] == opt.param_groups[0]["d"]
    sf = lo.ScheduleFreeAdamW([np.ones(3, np.float32)])
    sf.train()
    sf.add_param_group({"params": [np.ones(4, np.float32)]})
    sf.step([np.ones(3, np.float32), np.ones(4, np.float32)])


def test_repr_lists_groups_and_options_as_torch_does():
    opt = lo.AdamW([{"params": [np.ones(3, np.float32)]},
                    {"params": [np.ones(2, np.float32)], "lr": 0.5}], lr=1e-3)
    text = repr(opt)
    assert text.startswith("AdamW (\nParameter Group 0\n    amsgrad: False")
    assert "Parameter Group 1" in text and "    lr: 0.5" in text and text.endswith(")")
    assert "state_dtype=None" in text


@pytest.mark.parametrize("dtype, name", [(np.float32, "float32"), (np.dtype("float32"), "float32"),
                                         (bfloat16(), "bfloat16"), ("q8", "q8")])
def test_state_dtype_takes_dtypes(dtype, name):
    opt = lo.Adam([np.ones(5000, np.float32)], state_dtype=dtype)
    assert opt.state_dtype == name
    opt.step([np.ones(5000, np.float32)])
    m = opt.state[0]["exp_avgs"][0]
    assert isinstance(m, Q8State) if name == "q8" else m.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, "fp32", 3])
def test_state_dtype_refuses_other_dtypes(dtype):
    with pytest.raises((TypeError, ValueError), match="state_dtype"):
        lo.Adam([np.ones(3, np.float32)], state_dtype=dtype)


def test_stochastic_rounding_of_float32_params_warns_at_the_callers_line():
    with pytest.warns(UserWarning, match="changes nothing") as record:
        lo.Adam([np.ones(3, np.float32)], stochastic_rounding=True)
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lo.Adam([np.ones(3, bfloat16())], stochastic_rounding=True)


def test_version(tmp_path):
    # outside the checkout, whose source folder would hide an installed (non-editable) lrfast
    out = subprocess.run([sys.executable, "-m", "lrfast", "--version"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().startswith(f"lrfast {lrfast.__version__}")


# ------------------------------------------------------------------ lrfast.torch


def test_torch_add_param_group_refuses_a_bad_state_dtype_there():
    torch = pytest.importorskip("torch")
    import lrfast.torch as lt

    opt = lt.AdamW([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="state_dtype"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "state_dtype": "q7"})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))],
                         "state_dtype": torch.bfloat16})
    assert opt.param_groups[1]["state_dtype"] == "bfloat16"


def test_torch_state_dtype_takes_torch_dtypes_and_warns_for_float32_rounding():
    torch = pytest.importorskip("torch")
    import lrfast.torch as lt

    p = torch.nn.Parameter(torch.ones(5000))
    opt = lt.Adam([p], state_dtype=torch.bfloat16)
    p.grad = torch.ones(5000)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.bfloat16
    with pytest.warns(UserWarning, match="changes nothing") as record:
        lt.Adam([p], stochastic_rounding=True)
    assert record[0].filename == __file__
    q = torch.nn.Parameter(torch.ones(3))
    opt = lt.Prodigy([p])
    p.grad = torch.ones(5000)
    opt.step()
    opt.add_param_group({"params": [q]})
    q.grad = torch.ones(3)
    opt.step()
    assert opt.param_groups[1]["d"] == opt.param_groups[0]["d"]
