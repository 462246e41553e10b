"""lrfast.torch.AdamW against torch.optim.AdamW (fused and foreach) on the
parameters of a small transformer (lrfast.workloads.transformer_like_shapes:
146 tensors, 10.76 M float32 values). Gradients are filled once; only
``optimizer.step()`` is timed.

    pytest benchmarks/bench_torch_adapter.py --benchmark-columns=min,median,mean

``extra_info`` holds the effective bandwidth: AdamW moves 28 bytes per
parameter (param, grad, exp_avg, exp_avg_sq read; param and states written).
"""

import pytest

torch = pytest.importorskip("torch")

import lrfast.torch  # noqa: E402
from lrfast.workloads import transformer_like_shapes  # noqa: E402


OPTIMIZERS = {
    "lrfast.torch": lambda params: lrfast.torch.AdamW(params, lr=1e-3),
    "torch-fused": lambda params: torch.optim.AdamW(params, lr=1e-3, fused=True),
    "torch-foreach": lambda params: torch.optim.AdamW(params, lr=1e-3, foreach=True),
}


@pytest.mark.parametrize("impl", list(OPTIMIZERS))
def test_adamw_step(benchmark, impl):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in transformer_like_shapes()]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = OPTIMIZERS[impl](params)
    optimizer.step()  # allocates the state
    numel = sum(p.numel() for p in params)
    benchmark.group = f"AdamW step, {len(params)} tensors, {numel / 1e6:.2f} M float32"
    benchmark.pedantic(optimizer.step, rounds=30, warmup_rounds=3, iterations=1)
    benchmark.extra_info["tensors"] = len(params)
    benchmark.extra_info["GB/s"] = round(28 * numel / benchmark.stats.stats.min / 1e9, 1)
