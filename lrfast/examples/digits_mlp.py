"""A small NumPy MLP on scikit-learn's digits, trained with lrfast's fused steps.

The example model of ``lrfast demo`` and of the tests:

* data: the 1,797 8x8 images of ``sklearn.datasets.load_digits`` (bundled with
  scikit-learn, nothing is downloaded), split once by a seed into train and
  validation sets, features standardised with the training statistics;
* model: a ReLU MLP (64-64-64-10 by default) ending in a softmax, trained on
  the mean cross-entropy; forward and backward are written out by hand;
* parameters: a list of C-contiguous arrays ``[W1, b1, W2, b2, ...]``
  (``W`` has shape ``(fan_in, fan_out)``) so that one :func:`lrfast.sgd_step`
  or :func:`lrfast.adam_step` call updates them all;
* optimizers (:data:`OPTIMIZERS`): SGD with momentum and Adam through the step
  functions, and the two that set their own step size through their
  :mod:`lrfast.optim` classes: schedule-free AdamW (evaluated at its averaged
  weights, in ``eval()`` mode) and Prodigy.

:func:`train` runs one training job under any schedule ``s(t) -> lr`` (and
optionally a :class:`lrfast.schedules.ReduceLROnPlateau`), :func:`range_test`
runs :func:`lrfast.find_lr` on a fresh model. Everything is seeded: the same
seed gives the same initial weights and minibatch order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..finder import LRFinderResult, find_lr
from ..steps import adam_step, sgd_step

__all__ = ["Digits", "load_digits", "MLP", "Optimizer", "TrainResult", "train", "range_test",
           "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "schedulefree_adamw", "prodigy")


@dataclass(frozen=True)
class Digits:
    """Standardised features (float32 by default) and integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_digits(seed: int = 0, val_fraction: float = 0.3, dtype: Any = np.float32) -> Digits:
    """The digits data set split at random (by ``seed``) into train and validation.

    30% (539 images) go to validation: a cross-entropy over fewer images is
    dominated by the handful a model gets confidently wrong, and differences
    of a few percent between learning rates drown in that noise.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x, y = data.data.astype(np.float64), data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = round(len(y) * val_fraction)
    val, tr = order[:n_val], order[n_val:]
    mean, std = x[tr].mean(axis=0), x[tr].std(axis=0)
    std[std == 0] = 1.0  # some border pixels are always 0
    x = ((x - mean) / std).astype(dtype)
    return Digits(x[tr], y[tr], x[val], y[val])


class MLP:
    """ReLU layers of ``sizes`` (input, hidden..., classes) with a softmax output.

    Weights start with He initialisation (``N(0, 2 / fan_in)``), biases at 0.
    """

    def __init__(self, sizes: tuple[int, ...] = (64, 64, 64, 10), *, seed: int = 0,
                 dtype: Any = np.float32) -> None:
        rng = np.random.default_rng(seed)
        self.params: list[np.ndarray] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            weight = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
            self.params += [weight.astype(dtype), np.zeros(fan_out, dtype)]

    def _forward(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Inputs of every layer, and the log-probabilities."""
        inputs, h = [], x
        weights, biases = self.params[0::2], self.params[1::2]
        for k, (w, b) in enumerate(zip(weights, biases)):
            inputs.append(h)
            h = h @ w + b
            if k < len(weights) - 1:
                h = np.maximum(h, 0)
        # log-softmax, shifted by the row maximum so exp cannot overflow
        shifted = h - h.max(axis=1, keepdims=True)
        return inputs, shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Mean cross-entropy on ``(x, y)`` and its gradient for every parameter.

        Backward pass: with ``p = softmax(logits)`` the gradient of the mean
        loss for the logits is ``(p - onehot(y)) / n``; through a layer
        ``z = h @ W + b`` it gives ``dW = h.T @ dz``, ``db = sum(dz)``,
        ``dh = dz @ W.T``, and through ``h = relu(z)`` it is masked by ``h > 0``.
        Diverging weights give inf/NaN losses, not warnings: detecting
        divergence is the caller's job.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            inputs, logp = self._forward(x)
            rows = np.arange(len(y))
            loss = -float(logp[rows, y].mean())
            dz = np.exp(logp)
            dz[rows, y] -= 1
            dz /= len(y)
            grads: list[np.ndarray] = [np.empty(0)] * len(self.params)
            for k in reversed(range(len(inputs))):
                h = inputs[k]
                grads[2 * k] = h.T @ dz
                grads[2 * k + 1] = dz.sum(axis=0)
                if k > 0:
                    dz = (dz @ self.params[2 * k].T) * (h > 0)
        return loss, grads

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) on ``(x, y)``."""
        with np.errstate(over="ignore", invalid="ignore"):
            _, logp = self._forward(x)
            loss = -float(logp[np.arange(len(y)), y].mean())
        return loss, float((logp.argmax(axis=1) == y).mean())


class Optimizer:
    """One of :data:`OPTIMIZERS` over a list of arrays: one fused lrfast call a step.

    ``step(grads, lr, momentum)`` applies one update; ``momentum`` (SGD's
    momentum, Adam's beta1) may change from step to step, as one-cycle does,
    and is ignored by the other two. ``evaluating()`` is the context in which
    to measure the model: schedule-free AdamW trains at ``y`` and is evaluated
    at its average ``x``. ``save()``/``restore(state)`` copy the parameters
    and the optimizer state out and back in place (the arrays keep their
    identity), for :func:`lrfast.find_lr`.
    """

    def __init__(self, kind: str, params: list[np.ndarray], *, momentum: float = 0.9) -> None:
        if kind not in OPTIMIZERS:
            raise ValueError(f"kind must be one of {OPTIMIZERS}, got {kind!r}")
        self.kind, self.params, self.momentum = kind, params, momentum
        self.steps = 0
        self.inner: Any = None  # the lrfast.optim object of the last two kinds
        self.state: list[list[np.ndarray]] = []
        if kind == "schedulefree_adamw":
            from ..optim import ScheduleFreeAdamW
            self.inner = ScheduleFreeAdamW(params)
            self.inner.train()
        elif kind == "prodigy":
            from ..optim import Prodigy
            self.inner = Prodigy(params)
        else:
            copies = 1 if kind == "sgd" else 2  # momentum buffers / exp_avgs and exp_avg_sqs
            self.state = [[np.zeros_like(p) for p in params] for _ in range(copies)]

    def step(self, grads: list[np.ndarray], lr: float, momentum: float | None = None) -> None:
        self.steps += 1
        momentum = self.momentum if momentum is None else momentum
        if self.inner is not None:
            self.inner.param_groups[0]["lr"] = lr
            self.inner.step(grads)
        elif self.kind == "sgd":
            sgd_step(self.params, grads, self.state[0], lr=lr, step=self.steps, momentum=momentum)
        else:
            adam_step(self.params, grads, *self.state, lr=lr, step=self.steps,
                      betas=(momentum, 0.999))

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        if self.kind != "schedulefree_adamw":
            yield
            return
        self.inner.eval()
        try:
            yield
        finally:
            self.inner.train()

    def save(self) -> tuple[int, list[np.ndarray], Any]:
        inner = None if self.inner is None else self.inner.state_dict()
        return self.steps, [a.copy() for a in self._arrays()], inner

    def restore(self, state: tuple[int, list[np.ndarray], Any]) -> None:
        self.steps, saved, inner = state
        for array, copy in zip(self._arrays(), saved):
            np.copyto(array, copy)
        if inner is not None:
            self.inner.load_state_dict(inner)

    def _arrays(self) -> list[np.ndarray]:
        return self.params + [a for arrays in self.state for a in arrays]


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Index arrays of shuffled minibatches forever, reshuffling every epoch; the
    incomplete last batch of an epoch is dropped so every step sees ``batch_size``."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


@dataclass(frozen=True)
class TrainResult:
    """One training run. ``eval_steps[i]`` updates had been applied when
    ``val_losses[i]``/``val_accuracies[i]`` were measured (the first at 0).
    ``steps_to_target`` is the first of them reaching the target accuracy, or
    None. A run stops early (``diverged``) at the first non-finite loss."""

    eval_steps: np.ndarray
    val_losses: np.ndarray
    val_accuracies: np.ndarray
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    steps_to_target: int | None
    seconds: float
    diverged: bool


def train(data: Digits, kind: str, schedule: Callable[[int], float], steps: int, *, seed: int = 0,
          batch_size: int = 64, eval_every: int = 20, plateau: Any = None,
          target_accuracy: float = 0.95, model: MLP | None = None) -> TrainResult:
    """Train ``model`` (default: a fresh ``MLP(seed=seed)``) for ``steps`` updates.

    Update ``t`` (from 0) uses rate ``schedule(t)``; a schedule with a
    ``momentum(t)`` method (one-cycle) also sets the momentum or beta1.
    With ``plateau`` (a ReduceLROnPlateau) the validation loss measured every
    ``eval_every`` steps is fed to ``plateau.step`` and the rate becomes
    ``plateau.rate(schedule(t))``.
    """
    model = MLP(seed=seed, dtype=data.x_train.dtype) if model is None else model
    opt = Optimizer(kind, model.params)
    batches = _batches(len(data.y_train), batch_size, np.random.default_rng(seed))
    momentum = getattr(schedule, "momentum", None)
    evals: list[tuple[int, float, float]] = []
    diverged = False
    start = time.perf_counter()
    for t in range(steps + 1):
        if t % eval_every == 0 or t == steps:
            with opt.evaluating():
                loss, acc = model.evaluate(data.x_val, data.y_val)
            evals.append((t, loss, acc))
            if plateau is not None and t > 0:
                plateau.step(loss)
        if t == steps:
            break
        idx = next(batches)
        loss, grads = model.loss_and_grads(data.x_train[idx], data.y_train[idx])
        if not np.isfinite(loss):
            diverged = True
            if evals[-1][0] != t:
                with opt.evaluating():
                    evals.append((t, *model.evaluate(data.x_val, data.y_val)))
            break
        lr = schedule(t) if plateau is None else plateau.rate(schedule(t))
        opt.step(grads, lr, None if momentum is None else momentum(t))
    seconds = time.perf_counter() - start
    eval_steps, val_losses, val_accs = (np.array(column) for column in zip(*evals))
    reached = np.flatnonzero(val_accs >= target_accuracy)
    with opt.evaluating():
        train_loss, train_acc = model.evaluate(data.x_train, data.y_train)
    return TrainResult(eval_steps=eval_steps, val_losses=val_losses, val_accuracies=val_accs,
                       train_loss=train_loss, train_accuracy=train_acc,
                       val_loss=float(val_losses[-1]), val_accuracy=float(val_accs[-1]),
                       steps_to_target=int(eval_steps[reached[0]]) if reached.size else None,
                       seconds=seconds, diverged=diverged)


def range_test(data: Digits, kind: str, *, seed: int = 0, batch_size: int = 64,
               model: MLP | None = None, **finder_kwargs: Any) -> LRFinderResult:
    """:func:`lrfast.find_lr` on ``model`` (default: a fresh ``MLP(seed=seed)``)
    with a fresh ``kind`` optimizer, one minibatch per step; the model's
    parameters are restored afterwards. ``finder_kwargs`` go to ``find_lr``."""
    model = MLP(seed=seed, dtype=data.x_train.dtype) if model is None else model
    opt = Optimizer(kind, model.params)
    # its own stream of minibatches, so training with this seed is unaffected
    batches = _batches(len(data.y_train), batch_size, np.random.default_rng([seed, 1]))

    def train_step(lr: float) -> float:
        idx = next(batches)
        loss, grads = model.loss_and_grads(data.x_train[idx], data.y_train[idx])
        opt.step(grads, lr)
        return loss

    return find_lr(train_step, save=opt.save, restore=opt.restore, **finder_kwargs)
