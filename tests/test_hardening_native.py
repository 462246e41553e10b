"""The native layer under misuse: threads that cannot start, absurd thread
counts, bad LRFAST_NUM_THREADS values, lists edited while a step runs, and fork
while another thread steps. A failure here is a crash or a hang, so each
scenario runs in its own interpreter with a time limit."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import lrfast

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


# Under an address-space limit a few MiB above what the process maps, a thread
# cannot map its stack (8 MiB): the pool starts with the threads that fit, or
# none, and the step runs on them.
POOL_UNDER_LIMIT = """
import resource, sys, warnings
import numpy as np
import lrfast

headroom = int(sys.argv[1]) << 20
p, g = np.zeros(1 << 22, np.float32), np.ones(1 << 22, np.float32)
lrfast.set_num_threads(64)
with open("/proc/self/status") as status:
    mapped = next(int(line.split()[1]) << 10 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (mapped + headroom, resource.RLIM_INFINITY))
with warnings.catch_warnings(record=True) as first:
    warnings.simplefilter("always")
    lrfast.sgd_step(p, g, lr=0.5)
with warnings.catch_warnings(record=True) as second:
    warnings.simplefilter("always")
    lrfast.sgd_step(p, g, lr=0.5)
assert p.min() == p.max() == -1.0  # no temporary: the limit leaves no room
assert [w.category for w in first] == [RuntimeWarning], [str(w.message) for w in first]
assert second == [], "warned twice"
print(lrfast.get_num_threads(), first[0].message)
"""


@pytest.mark.parametrize("headroom_mib", [2, 30], ids=["no-thread-fits", "a-few-fit"])
def test_pool_that_cannot_start_every_thread_runs_with_those_it_has(headroom_mib):
    out = run_python(POOL_UNDER_LIMIT, str(headroom_mib))
    assert_ok(out)
    threads, message = out.stdout.split(maxsplit=1)
    assert 1 <= int(threads) < 64
    assert f"only {threads} of the 64 threads asked for could run" in message
    assert f"steps use {threads}" in message


def test_huge_thread_count_is_refused():
    out = run_python("""
        import lrfast, numpy as np
        before = lrfast.get_num_threads()
        try:
            lrfast.set_num_threads(10**6)
        except ValueError as e:
            print(e)
        else:
            raise SystemExit("accepted")
        assert lrfast.get_num_threads() == before
        p = np.zeros(1 << 20, np.float32)
        lrfast.sgd_step(p, np.ones_like(p), lr=1.0)
        assert (p == -1).all()
    """)
    assert_ok(out)
    assert out.stdout.strip() == "n must be <= 256 (lrfast's most threads), got 1000000"


@pytest.fixture
def restore_threads():
    configured = lrfast.get_num_threads()
    yield
    lrfast.set_num_threads(configured)


@pytest.mark.parametrize("n", [True, 2.0, "4", None])
def test_thread_count_must_be_an_int(n, restore_threads):
    with pytest.raises(TypeError, match=f"n must be an int, got {type(n).__name__}"):
        lrfast.set_num_threads(n)


@pytest.mark.parametrize("n, message", [
    (257, "n must be <= 256 .*got 257"),
    (10**400, "n must be <= 256 .*got an int beyond the 64-bit range"),
    (-10**400, "n must be >= 1, got an int beyond the 64-bit range"),
], ids=["257", "10**400", "-10**400"])
def test_thread_count_out_of_range(n, message, restore_threads):
    with pytest.raises(ValueError, match=message):
        lrfast.set_num_threads(n)


def test_thread_count_takes_integer_likes(restore_threads):
    lrfast.set_num_threads(np.int64(3))
    assert lrfast.get_num_threads() == 3
    lrfast.set_num_threads(256)
    assert lrfast.get_num_threads() == 256


CPUS = min(len(os.sched_getaffinity(0)), 256)


@pytest.mark.parametrize("value, threads, warning", [
    ("3", 3, None),
    ("99999999999999", 256,
     "LRFAST_NUM_THREADS=99999999999999 is above the maximum of 256 threads; using 256"),
    ("1" + "0" * 30, 256, "is above the maximum of 256 threads"),
    ("3abc", CPUS, "ignoring LRFAST_NUM_THREADS=3abc (expected a whole number from 1 to 256); "
                   f"using {CPUS}, the CPU count"),
    ("junk", CPUS, "ignoring LRFAST_NUM_THREADS=junk"),
    ("0", CPUS, "ignoring LRFAST_NUM_THREADS=0"),
    ("-2", CPUS, "ignoring LRFAST_NUM_THREADS=-2"),
    (" 2", CPUS, "ignoring LRFAST_NUM_THREADS= 2"),
    ("", CPUS, "ignoring LRFAST_NUM_THREADS= (expected"),
])
def test_thread_count_from_environment(value, threads, warning):
    out = run_python("import lrfast; print(lrfast.get_num_threads())", LRFAST_NUM_THREADS=value)
    assert_ok(out)
    assert out.stdout.strip() == str(threads)
    if warning is None:
        assert "LRFAST_NUM_THREADS" not in out.stderr
    else:
        assert "RuntimeWarning: " in out.stderr and warning in out.stderr


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


def test_fork_while_another_thread_steps():
    # Each child is forked while the parent's other thread is most likely inside
    # a step, holding the pool's locks; it must still set the thread count and
    # step, on one thread and on several.
    out = run_python("""
        import os, signal, threading, time, traceback
        import numpy as np
        import lrfast

        lrfast.set_num_threads(2)
        p, g = np.zeros(1 << 25, np.float32), np.ones(1 << 25, np.float32)
        stop = threading.Event()

        def stepping():
            while not stop.is_set():
                lrfast.sgd_step(p, g, lr=0.0)

        def child():
            q = np.zeros(1 << 20, np.float32)
            lrfast.sgd_step(q, np.ones_like(q), lr=1.0)
            for threads in (1, 2, 1):
                lrfast.set_num_threads(threads)
                lrfast.sgd_step(q, np.ones_like(q), lr=1.0)
            assert lrfast.get_num_threads() == 1
            assert (q == -4).all()

        def wait(pid, seconds=6):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return os.waitstatus_to_exitcode(status)
                time.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung"

        stepper = threading.Thread(target=stepping)
        stepper.start()
        results = []
        while len(results) < 3 and set(results) <= {0}:
            time.sleep(0.02)
            pid = os.fork()
            if pid == 0:
                try:
                    child()
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            results.append(wait(pid))
        stop.set()
        stepper.join()
        assert results == [0, 0, 0], results
    """)
    assert_ok(out)
