"""lrfast.torch under FSDP2 (``torch.distributed.fsdp.fully_shard``): two
processes (gloo, CPU) train a tiny MLP whose params are DTensors with every
optimizer beside its reference; clipping and norms span the ranks; a
checkpoint through torch.distributed.checkpoint resumes exactly. One run of
tests/fsdp2_worker.py (about 20 s on two cores) measures it all; the tests read what each
rank measured."""

import json
from pathlib import Path

import pytest
from launch import run_script

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

WORKER = Path(__file__).resolve().parent / "fsdp2_worker.py"
TIMEOUT = 240  # seconds; the gloo collectives themselves time out after 60
OPTIMIZERS = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Lion",
              "ScheduleFreeSGD", "ScheduleFreeAdamW", "Prodigy"]
TOLERANCE = 1e-12  # float64 params of size ~1; the reductions sum in other orders


def fsdp2_available() -> bool:
    if not (dist.is_available() and dist.is_gloo_available()):
        return False
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not fsdp2_available(),
                       reason="torch.distributed with gloo and FSDP2's fully_shard is not "
                              "available"),
]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of the two ranks measured."""
    out = tmp_path_factory.mktemp("fsdp2") / "results.json"
    returncode, log = run_script([str(WORKER), str(out)], TIMEOUT)
    assert returncode == 0, log
    return [json.loads(Path(f"{out}.rank{rank}").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_steps_as_its_reference(ranks, name):
    for rank in ranks:
        assert rank[name]["train"] <= TOLERANCE
        assert rank[name]["eval"] <= TOLERANCE  # schedule-free's x, after eval()


def test_prodigy_estimates_the_d_of_the_whole_params_on_every_rank(ranks):
    for rank in ranks:
        prodigy = rank["Prodigy"]
        assert prodigy["d_moved"] > 1.01  # the sums reached it: d left d0
        assert prodigy["d"] <= TOLERANCE  # relative to prodigyopt's in one process


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_distributed_checkpoint_resumes_exactly(ranks, name):
    """dcp.save of get_optimizer_state_dict; a fresh optimizer on a copy of
    the model, dcp.load, set_optimizer_state_dict; two more steps of each."""
    for rank in ranks:
        assert rank[name]["resumed"] == 0.0


def test_full_state_dicts_and_torchs_load_into_lrfast(ranks):
    for rank in ranks:
        states = rank["state_dicts"]
        assert states["lrfast.torch.AdamW"] == 0.0
        assert states["torch.optim.adamw.AdamW"] == 0.0  # torch's state into lrfast's


def test_prodigys_s_and_p0_keep_their_params_shape_under_fsdp2(ranks):
    shapes = {"0.weight": [5, 6], "0.bias": [5], "2.weight": [1, 5], "2.bias": [1]}
    for rank in ranks:
        for name, states in rank["state_dicts"]["prodigy_shapes"].items():
            assert states == dict.fromkeys(("s", "p0", "exp_avg", "exp_avg_sq"), shapes[name])


def test_norms_and_clipping_span_the_ranks(ranks):
    for rank in ranks:
        norms = rank["norms"]
        for p in ("2.0", "1.0", "inf", "3.0"):
            assert norms[f"norm_{p}"] <= TOLERANCE, p  # against the unsharded grads'
        assert norms["clip_norm"] <= TOLERANCE  # torch.nn.utils.clip_grad_norm_'s norm
        assert norms["clipped"] <= TOLERANCE  # and its clipped grads
        assert norms["clipped_norm"] == pytest.approx(0.01, rel=1e-5)
        assert norms["clamped"] == 0.0  # clip_grad_value, each rank its shards


def test_a_nan_on_one_rank_reaches_every_rank(ranks):
    """Rank 1's shard alone holds the NaN: both ranks see it, and both refuse."""
    for rank in ranks:
        norms = rank["norms"]
        assert norms["nan_inf_norm"] == norms["nan_2_norm"] == "nan"
        assert norms["nan_refused"].startswith("RuntimeError: the total norm")
        assert norms["prodigy_nan"].startswith("ValueError: the gradients hold an inf or NaN")


@pytest.mark.parametrize("what", ["q8", "q4"])
def test_low_bit_states_are_refused_for_dtensors(ranks, what):
    for rank in ranks:
        message = rank["refusals"][what]
        assert message.startswith("ValueError: param group 0, parameter 0")
        assert f"state_dtype='{what}' is not supported for DTensor parameters" in message
        assert rank["refusals"][f"{what}_unchanged"]


def test_prodigys_slice_p_is_refused_for_dtensors(ranks):
    for rank in ranks:
        message = rank["refusals"]["slice_p"]
        assert message.startswith("ValueError: param group 0, parameter 0")
        assert "slice_p=2 is not supported for DTensor parameters" in message


def test_each_shard_draws_its_own_rounding_bits(ranks):
    for rank in ranks:
        assert rank["stochastic_rounding"] == {"rows_0_1_differ": True, "rows_0_2_differ": True}
