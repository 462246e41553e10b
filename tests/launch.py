"""Runs a script that starts processes of its own (torch.distributed over
gloo) and returns its exit status and output; shared by the distributed tests."""

import os
import signal
import subprocess
import sys

import pytest

# torchrun's variables: a script that finds them would join that job instead
TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def run_script(args: list[str], timeout: float) -> tuple[int, str]:
    """``python *args``; fails the test, workers killed, after ``timeout`` seconds."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN}
    # a session of its own, so that on a timeout the workers go down with it
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{args[0]} did not finish in {timeout} s:\n{out}")
    return proc.returncode, out
