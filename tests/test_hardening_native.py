"""The native layer under misuse: lists edited while a step runs. A failure
here is a crash or a hang, so each scenario runs in its own interpreter with a
time limit."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
LIMIT_S = 25


# Subprocesses run in the tests folder: from the repository root, `import lrfast`
# would find the source folder rather than the installed package.
def run_python(code, *args, **env):
    environ = {k: v for k, v in os.environ.items() if k != "LRFAST_NUM_THREADS"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          env=dict(environ, **env), cwd=TESTS, capture_output=True, text=True,
                          timeout=LIMIT_S)


def assert_ok(out):
    assert out.returncode == 0, f"exit status {out.returncode}\n{out.stdout}\n{out.stderr}"


def test_list_item_dropped_while_a_step_runs():
    # 256 MiB per array: freeing one unmaps it, so a kernel still using it
    # would fault. The step must hold its own references to the list's items.
    out = run_python("""
        import threading, time
        import numpy as np
        import lrfast

        n = 1 << 26
        ps, gs = [np.zeros(n, np.float32)], [np.ones(n, np.float32)]

        def drop():
            time.sleep(0.005)
            ps[0] = gs[0] = None

        for threads in (1, 2):
            lrfast.set_num_threads(threads)
            ps[0], gs[0] = np.zeros(n, np.float32), np.ones(n, np.float32)
            dropper = threading.Thread(target=drop)
            dropper.start()
            lrfast.sgd_step(ps, gs, lr=0.5)
            dropper.join()
    """)
    assert_ok(out)


@pytest.mark.parametrize("edit", ["params[0] = None", "params.clear()"])
def test_array_interface_that_edits_the_list(edit):
    # The step runs on the items the lists held when it was called.
    out = run_python(f"""
        import numpy as np
        import lrfast

        n = 1 << 24  # 64 MiB: unmapped when freed
        kept = np.zeros(n, np.float32)

        class Hostile:
            def __init__(self):
                self.array = np.ones(n, np.float32)

            @property
            def __array_interface__(self):
                {edit}
                return self.array.__array_interface__

        params = [np.zeros(n, np.float32), kept]
        grads = [Hostile(), np.ones(n, np.float32)]
        lrfast.sgd_step(params, grads, lr=0.5)
        assert (kept == -0.5).all()
    """)
    assert_ok(out)
