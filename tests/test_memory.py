"""A step allocates nothing proportional to the number of parameters: the peak
resident memory of a fresh process stays put across steps, norms and clips on
20M-element tensors (a single temporary copy would add 80 MB)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import resource, numpy as np, lrfast
n = 20_000_000
p, g, m, v = (np.full(n, 0.5, np.float32) for _ in range(4))
buf = np.zeros(n, np.float32)
lrfast.adam_step(p, g, m, v, lr=1e-3, step=1)        # first call: pool, tables
lrfast.sgd_step(p, g, buf, lr=0.1, momentum=0.9, step=1)
lrfast.global_norm(g)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for step in range(2, 5):
    lrfast.adamw_step([p], [g], [m], [v], lr=1e-3, step=step, amsgrad=False)
    lrfast.sgd_step(p, g, buf, lr=0.1, momentum=0.9, step=step)
    lrfast.rmsprop_step(p, g, m, lr=1e-3)
    lrfast.adagrad_step(p, g, v, lr=1e-3, step=step)
    lrfast.adadelta_step(p, g, m, v)
    lrfast.clip_grad_norm(g, 1e9)
    lrfast.global_norm([g, p], 3.0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(after - before)
"""


@pytest.mark.slow
def test_steps_do_not_grow_peak_memory():
    # cwd: the tests folder, so that `import lrfast` finds the installed package,
    # not the source folder at the repository root.
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parent)
    assert out.returncode == 0, out.stderr
    growth_kib = int(out.stdout.strip())
    assert growth_kib < 4 * 1024, f"peak RSS grew by {growth_kib} KiB"
