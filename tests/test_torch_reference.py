"""The NumPy references and the fused steps against torch.optim, every case of
the table, both dtypes, a list of tensors, 10 steps with fresh gradients."""

import numpy as np
import pytest

import lrfast
from lrfast import reference
from cases import TORCH_CASES, call_step, gradients, make_problem

CASE_TABLE = TORCH_CASES  # the cases with a torch.optim class

torch = pytest.importorskip("torch")

SHAPES = [(4, 5), (17,), (1,), (33,)]
STEPS = 10

# torch keeps these states under other names
TORCH_STATE = {"momentum_buffers": "momentum_buffer", "exp_avgs": "exp_avg",
               "exp_avg_sqs": "exp_avg_sq", "max_exp_avg_sqs": "max_exp_avg_sq",
               "square_avgs": "square_avg", "grad_avgs": "grad_avg", "state_sums": "sum",
               "acc_deltas": "acc_delta", "exp_infs": "exp_inf"}


def run_torch(case, hp, dtype, shapes):
    params, _ = make_problem(case, hp, shapes, dtype)
    tensors = [torch.tensor(p, requires_grad=True) for p in params]
    kwargs = {k: v for k, v in hp.items() if k != "grad_scale"}
    opt = getattr(torch.optim, case.torch_name)(tensors, foreach=False, **kwargs)
    scale = hp.get("grad_scale", 1.0)
    for step in range(1, STEPS + 1):
        for t, g in zip(tensors, gradients(shapes, dtype, step)):
            t.grad = torch.tensor(g) * scale  # grad_scale: the unscaled gradient
        opt.step()
    states = {name: [opt.state[t][TORCH_STATE[name]].numpy() for t in tensors]
              for name in case.states_for(hp)}
    return [t.detach().numpy() for t in tensors], states


def run_ours(impl, case, hp, dtype, shapes, single):
    params, states = make_problem(case, hp, shapes, dtype)
    for step in range(1, STEPS + 1):
        grads = gradients(shapes, dtype, step)
        if single:  # bare arrays rather than lists of one
            call_step(getattr(impl, case.step_fn), case, hp, params[0], grads[0],
                      {k: v[0] for k, v in states.items()}, step)
        else:
            call_step(getattr(impl, case.step_fn), case, hp, params, grads, states, step)
    return params, states


@pytest.mark.parametrize("single", [False, True], ids=["list", "single"])
@pytest.mark.parametrize("impl", [reference, lrfast], ids=["reference", "lrfast"])
def test_matches_torch_optim(case, hp, dtype, impl, single):
    shapes = SHAPES[-1:] if single else SHAPES
    want_params, want_states = run_torch(case, hp, dtype, shapes)
    got_params, got_states = run_ours(impl, case, hp, dtype, shapes, single)
    # torch's scalar arithmetic differs in the last bits (lerp form, scalar
    # division, grad_scale applied outside): tolerances are a few ulps x steps.
    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else (1e-11, 1e-12)
    for i, (a, b) in enumerate(zip(got_params, want_params)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"params[{i}]")
    for name, arrays in want_states.items():
        for i, (a, b) in enumerate(zip(got_states[name], arrays)):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name}[{i}]")
