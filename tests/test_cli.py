"""The ``lrfast`` command line: ``lrfast schedule`` end to end, and every misuse
ending in one line on stderr and a non-zero exit status, before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lrfast import schedules as S
from lrfast.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def one_error_line(err: str, command: str = "lrfast") -> str:
    """The single line of an error report (and checks that it is one)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"{command}") and ": error: " in lines[0], err
    return lines[0]


# ---------------------------------------------------------------- lrfast schedule


def test_schedule_prints_table(capsys):
    expression = "warmup(cosine_restarts(0.1, 200, cycle_mult=2, peak_decay=0.8), 50)"
    assert main(["schedule", expression, "--steps", "1000", "--every", "250"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("warmup(schedule=cosine_restarts(")
    assert out[1].split() == ["step", "lr"]
    rows = [line.split() for line in out[2:]]
    assert [int(r[0]) for r in rows] == [0, 250, 500, 750, 999]
    s = S.parse_schedule(expression)
    assert [float(r[1]) for r in rows] == pytest.approx([s(t) for t in (0, 250, 500, 750, 999)], rel=1e-5)


def test_schedule_momentum_and_default_every(capsys):
    assert main(["schedule", "one_cycle(0.1, 100)", "--steps", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["step", "lr", "momentum"]
    assert len(out) == 2 + 21 and out[-1].split()[0] == "99"


def test_schedule_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "s.png"
    assert main(["schedule", "cyclic(0.001, 0.1, 50)", "--steps", "300", "--plot", str(path), "--log"]) == 0
    assert path.read_bytes()[:8] == PNG
    assert "plot written" in capsys.readouterr().out


def test_schedule_takes_the_largest_step_count(capsys):
    assert main(["schedule", "constant(0.1)", "--steps", str(2**63)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == [str(2**63 - 1), "0.1"]


# ---------------------------------------------------------------- misuse

HUGE = str(2**70)

MISUSE = {
    # argv: what the one line must say
    "no command": ([], "choose a command: bench, schedule, demo"),
    "unknown command": (["benchmark"], "invalid choice: 'benchmark'"),
    "steps as an expression": (["schedule", "constant(0.1)", "--steps", "2**70"], "--steps"),
    "steps too large": (["schedule", "constant(0.1)", "--steps", HUGE], "from 1 to 2**63"),
    "steps zero": (["schedule", "constant(0.1)", "--steps", "0"], "--steps: must be from 1"),
    "every zero": (["schedule", "constant(0.1)", "--steps", "10", "--every", "0"], "--every"),
    "plot in a missing folder": (["schedule", "constant(0.1)", "--steps", "10", "--plot",
                                  "/missing-dir/x.png"], "no folder '/missing-dir'"),
    "plot to a folder": (["schedule", "constant(0.1)", "--steps", "10", "--plot", "."], "is a folder"),
    "missing constructor argument": (["schedule", "cosine_decay(0.1)", "--steps", "10"],
                                     "cosine_decay(lr, total_steps, min_lr=0.0): missing a "
                                     "required argument: 'total_steps'"),
    "unknown keyword": (["schedule", "warmup(constant(0.1), 5, steps=3)", "--steps", "10"],
                        "unexpected keyword argument 'steps'"),
    "unknown schedule": (["schedule", "eval('1')", "--steps", "10"], "unknown schedule"),
    "syntax error": (["schedule", "cosine_decay(0.1,", "--steps", "10"], "cannot parse"),
    "deeply nested signs": (["schedule", "constant(" + "-" * 5000 + "1)", "--steps", "10"], ""),
    "very many signs": (["schedule", "constant(" + "-" * 100_000 + "1)", "--steps", "10"], ""),
    "400-digit number": (["schedule", f"constant(1{'0' * 400})", "--steps", "10"], ""),
    "30-digit step count": (["schedule", f"cosine_decay(0.1, 1{'0' * 29})", "--steps", "10"], ""),
    "threads negative": (["bench", "--threads", "-3"], "--threads: must be >= 1, got -3"),
    "threads zero": (["bench", "--threads", "0"], "--threads: must be >= 1, got 0"),
    "size zero": (["bench", "--sizes", "0"], "--sizes: each size must be a whole number"),
    "size fractional": (["bench", "--sizes", "1e3,2.5"], "got '2.5'"),
    "size not a number": (["bench", "--sizes", "big"], "got 'big'"),
    "size infinite": (["bench", "--sizes", "1e400"], "got '1e400'"),
    "unknown optimizer": (["bench", "--optimizers", "adam,adabelief"], "unknown optimizers ['adabelief']"),
    "no optimizer": (["bench", "--optimizers", ","], "name at least one"),
    "nothing to measure": (["bench", "--sizes", "", "--optimizers", "sgd"], "nothing to measure"),
    "json in a missing folder": (["bench", "--json", "/missing-dir/b.json"], "no folder"),
    "demo seeds zero": (["demo", "--seeds", "0"], "--seeds: must be >= 1"),
    "demo steps negative": (["demo", "--steps", "-5"], "--steps: must be >= 1"),
}


@pytest.mark.parametrize("argv, message", MISUSE.values(), ids=MISUSE.keys())
def test_misuse_is_one_line_and_exit_status_2(argv, message, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert message in one_error_line(err)
    assert out == ""  # refused before any work or output


def test_plot_in_an_unknown_format_is_refused_before_the_table(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    assert main(["schedule", "constant(0.1)", "--steps", "10", "--plot", str(tmp_path / "x.foo")]) == 2
    out, err = capsys.readouterr()
    assert "image format" in one_error_line(err, "lrfast schedule") and out == ""


def test_plot_refuses_more_steps_than_it_can_draw(capsys, tmp_path):
    assert main(["schedule", "constant(0.1)", "--steps", str(10**9), "--plot", str(tmp_path / "x.png")]) == 2
    assert "--steps must be at most" in one_error_line(capsys.readouterr().err)


def test_demo_out_that_is_a_file(capsys, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["demo", "--quick", "--seeds", "1", "--out", str(taken)]) == 1
    assert "cannot make the folder" in one_error_line(capsys.readouterr().err, "lrfast demo")


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["bench", "--threads", "-3"],
                                  ["schedule", "cosine_decay(0.1)", "--steps", "10"]])
def test_the_process_exits_2_with_one_line(argv, tmp_path):
    """As a user sees it: the exit status of the process, and no traceback.
    (Run outside the checkout, whose lrfast/ would hide a non-editable install.)"""
    done = subprocess.run([sys.executable, "-m", "lrfast.cli", *argv], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    one_error_line(done.stderr)
