"""Calls of lrfast's public API as users write them: type-checked by mypy in
tests/test_typing.py, never run. A line whose comment is "E: <code>" must get
that mypy error, a reveal_type line whose comment is "R: <text>" must reveal a
type containing the text, and every other line must pass."""

import numpy as np

import lrfast
from lrfast.array_types import Tensors

p, g = np.zeros(10, np.float32), np.ones(10, np.float32)
m, v = np.zeros_like(p), np.zeros_like(p)
params: Tensors = [p]

lrfast.adam_step(p, g, m, v, lr=1e-3, step=1)
lrfast.adam_step(params, [g], (m,), [v], lr=np.float32(1e-3), step=np.int64(2), betas=(0.9, 0.99))
lrfast.adamw_step(p, g, m, v, step=3, amsgrad=np.bool_(False))
buffer = memoryview(bytearray(40)).cast("f")  # ten float32 elements
lrfast.sgd_step(buffer, g, lr=0.1)
lrfast.sgd_step(p, g, lr=0.1)
lrfast.rmsprop_step(p, g, v, lr=0.01, centered=True, grad_avgs=m)
lrfast.adagrad_step(p, g, v, step=1)
lrfast.adadelta_step(p, g, m, v)
norm: float = lrfast.global_norm([g], norm_type=np.inf)
norm = lrfast.clip_grad_norm(g, 1.0)
lrfast.clip_grad_value(g, 0.5)
lrfast.adam_step(p, g, m, v, step=1, grad_scale=lrfast.clip_coefficient(norm, 1.0))
isa: str = lrfast.cpu_isa()
lrfast.set_num_threads(2)
threads: int = lrfast.get_num_threads()
rate: float = lrfast.find_lr(lambda lr: 1.0 / lr).suggest()

reveal_type(lrfast.adam_step)  # R: *, lr:
reveal_type(lrfast.global_norm(g))  # R: float

lrfast.adam_step(p, g, m, v, lr="x", step=1)  # E: arg-type
lrfast.adam_step(p, g, m, v, lr=1e-3)  # E: call-arg
lrfast.adam_step(p, g, m, v, 1e-3, step=1)  # E: arg-type
lrfast.adam_step(p, g, m, v, step=1, betas=0.9)  # E: arg-type
lrfast.sgd_step(p, g, lr=0.1, nesterov="yes")  # E: arg-type
lrfast.sgd_step([1.0, 2.0], g, lr=0.1)  # E: list-item
lrfast.rmsprop_step(p, g, v, centred=True)  # E: call-arg
lrfast.set_num_threads("2")  # E: arg-type
text: str = lrfast.global_norm(g)  # E: assignment
