"""Tensor layouts shared by `lrfast bench`, the benchmark suites and examples."""

from __future__ import annotations


def transformer_like_shapes(layers: int = 12, width: int = 256, vocab: int = 5000,
                            mlp_ratio: int = 4) -> list[tuple[int, ...]]:
    """The parameter shapes of a small GPT-style transformer: 146 tensors and
    10.76M parameters by default.

    A token embedding, then per layer a fused QKV projection, the output
    projection, two LayerNorms and a two-layer MLP, each with its bias, and a
    final LayerNorm weight. Most tensors are small, a few are large: the mix
    that makes per-tensor overhead visible.
    """
    hidden = mlp_ratio * width
    layer = [(3 * width, width), (3 * width,), (width, width), (width,),
             (width,), (width,),                      # LayerNorm 1
             (hidden, width), (hidden,), (width, hidden), (width,),
             (width,), (width,)]                      # LayerNorm 2
    return [(vocab, width)] + layer * layers + [(width,)]


def many_small_shapes(count: int = 1000, size: int = 1000) -> list[tuple[int, ...]]:
    """`count` tensors of `size` elements: where per-tensor overhead dominates."""
    return [(size,)] * count
