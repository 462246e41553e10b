"""lrfast.torch.AdamW against torch.optim.AdamW (fused and foreach) on the
parameters of a small transformer: 12 layers of width 256 (per layer the q, k,
v, o weights 256x256 and biases, two LayerNorms, an MLP 256x1024 and
1024x256 with biases) and a 5000x256 embedding: 193 tensors, 10.76 M
float32 values. Gradients are filled once; only ``optimizer.step()`` is timed.

    pytest benchmarks/bench_torch_adapter.py --benchmark-columns=min,median,mean

``extra_info`` holds the effective bandwidth: AdamW moves 28 bytes per
parameter (param, grad, exp_avg, exp_avg_sq read; param and states written).
"""

import pytest

torch = pytest.importorskip("torch")

import lrfast.torch  # noqa: E402

WIDTH, LAYERS, VOCAB = 256, 12, 5000


def transformer_shapes():
    layer = ([(WIDTH, WIDTH), (WIDTH,)] * 4  # q, k, v, o
             + [(WIDTH,), (WIDTH,)] * 2  # two LayerNorms
             + [(4 * WIDTH, WIDTH), (4 * WIDTH,), (WIDTH, 4 * WIDTH), (WIDTH,)])  # MLP
    return layer * LAYERS + [(VOCAB, WIDTH)]


OPTIMIZERS = {
    "lrfast.torch": lambda params: lrfast.torch.AdamW(params, lr=1e-3),
    "torch-fused": lambda params: torch.optim.AdamW(params, lr=1e-3, fused=True),
    "torch-foreach": lambda params: torch.optim.AdamW(params, lr=1e-3, foreach=True),
}


@pytest.mark.parametrize("impl", list(OPTIMIZERS))
def test_adamw_step(benchmark, impl):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in transformer_shapes()]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = OPTIMIZERS[impl](params)
    optimizer.step()  # allocates the state
    numel = sum(p.numel() for p in params)
    benchmark.group = f"AdamW step, {len(params)} tensors, {numel / 1e6:.2f} M float32"
    benchmark.pedantic(optimizer.step, rounds=30, warmup_rounds=3, iterations=1)
    benchmark.extra_info["tensors"] = len(params)
    benchmark.extra_info["GB/s"] = round(28 * numel / benchmark.stats.stats.min / 1e9, 1)
