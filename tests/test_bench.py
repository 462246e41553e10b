"""`lrfast bench` on tiny sizes: it runs, prints its table and writes sane JSON."""

import io
import json
import sys
import types

import numpy as np
import pytest

from lrfast import bench, bench_table
from lrfast.cli import main
from lrfast.progress import Progress


def test_bench_writes_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "1000,17", "--optimizers", "adam,sgd", "--no-lists",
                 "--json", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert err == ""  # no progress line when stderr is not a terminal
    assert bench_table.legend() in printed and bench_table.header() in printed
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["optimizer"], r["layout"]) for r in rows] == [
        ("adam", "1x1000"), ("sgd", "1x1000"), ("adam", "1x17"), ("sgd", "1x17")]
    for r in rows:
        assert r["time_s"] > 0 and r["gbytes_s"] > 0 and r["bandwidth_gbs"] > 0
        assert r["vs_reference"] > 0
        assert (r["vs_torch"] is None) == (not bench.torch_available())
    adam = rows[0]
    assert adam["gbytes_s"] == pytest.approx(28 * 1000 / adam["time_s"] / 1e9)
    assert result["machine"]["isa"] in ("baseline", "avx2", "avx512")


def test_bench_lists_and_clip_row(capsys):
    assert main(["bench", "--sizes", "", "--optimizers", "adamw", "--no-reference",
                 "--no-torch"]) == 0
    printed = capsys.readouterr().out
    for layout in ("1000x1000", "transformer-146", "clip+adamw"):
        assert layout in printed


def test_bench_refuses_unknown_optimizers(capsys):
    assert main(["bench", "--optimizers", "adam,adabelief"]) == 2
    assert "unknown optimizers ['adabelief']" in capsys.readouterr().err


def test_bench_cuda_without_gpu_says_so(capsys, monkeypatch):
    cuda = pytest.importorskip("numba.cuda")
    monkeypatch.setattr(cuda, "is_available", lambda: False)  # as on a machine without a GPU
    assert main(["bench", "--device", "cuda", "--sizes", "1000"]) == 1
    assert "--device cuda found no usable CUDA GPU" in capsys.readouterr().err


def test_the_legend_explains_every_column():
    legend = bench_table.legend()
    titles = bench_table.header().splitlines()[0]
    for column in bench_table.COLUMNS:
        assert column.title in titles
        assert f"\n  {column.title}  " in legend, column.title
    assert "above 100 is noise" in legend
    assert "copy" in bench_table.legend("cuda")


def test_ratios_read_as_ratios():
    row = dict(optimizer="adam", dtype="float32", layout="1x1000", time_s=1e-5, gelem_s=0.1,
               gbytes_s=2.8, bandwidth_gbs=20.0, pct_of_bandwidth=50.0, vs_reference=2.5,
               vs_torch=1.234, torch_impl="fused")
    assert bench_table.row(row).split()[-3:] == ["2.5x", "1.23x", "fused"]
    no_torch = dict(row, vs_torch=None, torch_impl=None)
    assert bench_table.row(no_torch).split()[-3:] == ["2.5x", "-", "-"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_rewrites_one_line_on_a_terminal_only():
    tty = Terminal()
    progress = Progress(tty, interval=0)
    progress.show("row 1 of 2: adam 1x50000000, making the arrays")
    progress.show("row 1 of 2: adam, round 1")
    progress.clear()
    written = tty.getvalue()
    assert "\n" not in written and written.count("\r") == 4 and written.endswith("\r")
    assert written.split("\r")[2].startswith("row 1 of 2: adam, round 1  ")  # covers the longer text

    piped = io.StringIO()
    progress = Progress(piped, interval=0)
    progress.show("anything")
    progress.clear()
    assert piped.getvalue() == ""


@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_low_bit_rows_of_other_libraries_where_they_import(monkeypatch, kind):
    torch = pytest.importorskip("torch")
    bits = kind[1]
    fake = types.ModuleType("lrfast_fake_low_bit")
    setattr(fake, f"AdamW{bits}bit", torch.optim.AdamW)  # takes the same arguments
    monkeypatch.setitem(sys.modules, "lrfast_fake_low_bit", fake)
    monkeypatch.setattr(bench, "LOW_BIT", {kind: {"fake": "lrfast_fake_low_bit",
                                                  "gone": "lrfast_no_such_module"}})
    rows = bench.measure("adamw", "1x5000", [(5000,)], "float32", False, True, None,
                         state_dtype=kind)
    assert [r["optimizer"] for r in rows] == ["adamw", f"fake-adamw{bits}"]
    assert [r["dtype"] for r in rows] == [f"float32/{kind}", "float32/its float32"]  # torch's
    assert rows[1]["time_s"] > 0 and rows[1]["vs_torch"] > 0 and rows[1]["pct_of_bandwidth"] > 0
    # none for other optimizers, other states, or without torch
    assert len(bench.measure("sgd", "1x5000", [(5000,)], "float32", False, True, None,
                             state_dtype=kind)) == 1
    assert len(bench.measure("adamw", "1x5000", [(5000,)], "float32", False, True, None)) == 1
    assert len(bench.measure("adamw", "1x5000", [(5000,)], "float32", False, False, None,
                             state_dtype=kind)) == 1


def test_low_bit_states_are_told_from_float_ones():
    torch = pytest.importorskip("torch")
    p = torch.zeros(300)

    class Subclass(torch.Tensor):
        pass

    def opt(state):
        return types.SimpleNamespace(state={p: state})

    assert bench._has_low_bit_states(opt({"step": torch.tensor(1.0),
                                        "state1": torch.zeros(300, dtype=torch.uint8)}))
    assert bench._has_low_bit_states(opt({"exp_avg": torch.zeros(300).as_subclass(Subclass)}))
    assert not bench._has_low_bit_states(opt({"exp_avg": torch.zeros(300),
                                            "absmax": torch.zeros(2, dtype=torch.uint8)}))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", ["q8", "q4"])
def test_low_bit_default_sizes_give_torchao_low_bit_states(kind):
    """torchao keeps float32 states for a tensor whose size is not a multiple of
    its block: the low-bit runs' default sizes are, so its rows time 8 or 4 bits."""
    pytest.importorskip("torchao.optim")
    sizes = bench.default_sizes(kind)
    assert len(sizes) == len(bench.default_sizes("param"))
    assert all(n % bench.LOW_BIT_MULTIPLE == 0 for n in sizes)

    def torchao_keeps_low_bit_states(n):
        problem = bench.Problem("adamw", [(n,)], "float32", kind)
        (_, cls), = [r for r in problem.low_bit_rivals() if r[0].startswith("ao-")]
        opt = problem.torch_optimizer(cls)[0]
        opt.step()
        return bench._has_low_bit_states(opt)

    # the smallest default with low-bit states (below 4096 elements every library
    # keeps float32 states); torchao compiles its step per size, so one is enough
    assert torchao_keeps_low_bit_states(min(n for n in sizes if n >= 4096))
    assert not torchao_keeps_low_bit_states(100_000)  # 1e5 as it was


def test_bench_json_records_the_machine_and_the_options(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "1000", "--optimizers", "sgd", "--no-lists", "--no-torch",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"cpu", "cores", "isa", "threads", "date", "libraries"} <= set(result["machine"])
    assert result["options"]["sizes"] == [1000] and result["options"]["json"] == str(out)
    assert result["rows"][0]["bytes_per_element"] == 20  # SGD with momentum in float32


def _snapshot(problem):
    arrays = problem.params + problem.grads + [x for s in problem.states for x in s if x is not None]
    return [b"".join(a.tobytes() for a in (getattr(x, "codes", x), getattr(x, "absmax", x)))
            for x in arrays]


@pytest.mark.parametrize("dtype,state_dtype", [("float32", None), ("float64", None),
                                               ("bfloat16", None), ("float32", "q8"),
                                               ("bfloat16", "q4")])
@pytest.mark.parametrize("write", [True, False])
def test_the_probe_leaves_every_array_as_it_was(dtype, state_dtype, write):
    """The bandwidth probe reads (and writes back) the arrays of a step without
    changing a bit of them, read only or not, on every storage."""
    from lrfast import _core

    problem = bench.Problem("adam", [(7,), (1000,), (4099,)], dtype, state_dtype)
    for states in problem.states:  # non-zero bits in every array
        for p, x in zip(problem.params, states):
            if isinstance(x, np.ndarray):
                x[...] = p
            else:
                x.codes[...] = np.arange(x.codes.size).astype(np.uint8)
                x.absmax[...] = 0.5
    before = _snapshot(problem)
    names = ("params", "grads") + problem.state_names
    _core.stream(tuple([problem.params, problem.grads] + problem.states), names, write)
    assert _snapshot(problem) == before


def test_adafactor_probe_moves_its_step_bytes_and_leaves_the_arrays():
    problem = bench.AdafactorProblem("adafactor", [(300, 40), (17,)], "float32")
    assert problem.bytes == 4 * (5 * 300 * 40 + 8 * 17)
    before = _snapshot(problem)
    problem.stream()
    assert _snapshot(problem) == before


def test_adafactor_bench_takes_16bit_params_with_float32_states():
    problem = bench.AdafactorProblem("adafactor", [(30, 40), (17,)], "bfloat16")
    assert [x.dtype.name for s in problem.states for x in s if x is not None] == ["float32"] * 3
    assert problem.bytes == 5 * 2 * 30 * 40 + (5 * 2 + 3 * 4) * 17
    before = _snapshot(problem)
    problem.stream()
    assert _snapshot(problem) == before
    problem.step("lrfast")
    assert _snapshot(problem) != before


def test_prodigy_has_a_probe_of_its_two_passes():
    problem = bench.Problem("prodigy", [(1000,), (7,)], "float32")
    before = _snapshot(problem)
    problem.stream()
    assert _snapshot(problem) == before
    rows = bench.measure("prodigy", "1x1000", [(1000,)], "float32", with_reference=False,
                         with_torch=False, busy=None)
    assert rows[0]["pct_of_bandwidth"] > 0
