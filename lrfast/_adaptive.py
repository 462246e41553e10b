"""NAdam's, RAdam's and Adamax's descriptions for the optimizer classes.

NAdam carries one scalar across steps, ``mu_product`` (the product of its
momentum schedule ``mu_1 ... mu_t``), which its step function takes as it
stands after the step. torch keeps it per parameter, a float32 tensor
(float64 under a float64 default dtype) that each step multiplies by
``mu_t``; :mod:`lrfast.torch` keeps those tensors (a piece's ``scalars``) and
multiplies them with torch's own operation, :mod:`lrfast.optim`, whose
parameters share one step count, keeps it per group (the group key
``mu_product``) and multiplies it in float32 the same way
(:func:`lrfast._hparams.nadam_mu_product`). Either way a class steps as
torch.optim.NAdam does, bit for bit.
"""

from __future__ import annotations

from typing import Mapping, MutableMapping, Sequence

from . import _hparams, steps_adaptive
from ._backend import through
from ._kernel import Kernel, Piece, Update

_MOMENTS = ("exp_avgs", "exp_avg_sqs")


class NadamKernel(Kernel):
    def _mu(self, update: Update, piece: Piece) -> float:
        """mu at this piece's step, from checked hyperparameters."""
        beta1 = _hparams.beta_pair(update.hparams["betas"])[0]
        momentum_decay = _hparams.non_negative("momentum_decay", update.hparams["momentum_decay"])
        return _hparams.nadam_mu(piece.step, beta1, momentum_decay)

    def _products(self, update: Update, piece: Piece, mu: float) -> list[float]:
        """Each param's mu_product after this step (not yet stored)."""
        if piece.scalars is None:  # lrfast.optim: the group's
            product = _hparams.nadam_mu_product(update.group["mu_product"], piece.step,
                                                update.hparams["betas"][0],
                                                update.hparams["momentum_decay"])
            return [product] * len(piece.params)
        return [(t * mu).item() for t in piece.scalars["mu_product"]]  # torch's float32 product

    def _apply(self, update: Update, piece: Piece, grad_scale: float) -> None:
        products = self._products(update, piece, self._mu(update, piece))
        # Params with one step count share one product, unless a state dict
        # mixed others in: then one call per product, each on its own params.
        for product in dict.fromkeys(products):
            part = piece if len(set(products)) == 1 else _subset(
                piece, [i for i, x in enumerate(products) if x == product])
            with through(part.via):
                self(part.params, part.grads, part.states,
                     {**update.hparams, **part.rounding, "mu_product": product}, lr=update.lr,
                     step=part.step, grad_scale=grad_scale)

    def validate(self, hparams: Mapping, lr) -> None:
        self([], [], {name: [] for name in self.states}, {"mu_product": 0.0, **hparams}, lr=lr,
             step=1)

    def run(self, groups: Sequence[MutableMapping], updates: Sequence[Update],
            grad_scale: float = 1.0, grad_norm: float | None = None) -> None:
        for update in updates:
            for piece in update.pieces:
                mu = self._mu(update, piece)
                products = self._products(update, piece, mu)
                self._apply(update, piece, grad_scale)
                if piece.scalars is None:
                    update.group["mu_product"] = products[0]
                else:
                    for t in piece.scalars["mu_product"]:
                        t.mul_(mu)
                piece.done(True)


def _subset(piece: Piece, index: list[int]) -> Piece:
    """The piece's params at ``index``, through the plain back end (a
    prepared call holds all of them)."""
    pick = lambda seq: [seq[i] for i in index]  # noqa: E731
    return piece._replace(params=pick(piece.params), grads=pick(piece.grads),
                          states={k: pick(v) for k, v in piece.states.items()}, via=None,
                          scalars=None)


NADAM = NadamKernel(steps_adaptive.nadam_step, _MOMENTS,
                    ("betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay",
                     "maximize"), lambda hp: _MOMENTS, scalar_states={"mu_product": 1.0})
RADAM = Kernel(steps_adaptive.radam_step, _MOMENTS,
               ("betas", "eps", "weight_decay", "decoupled_weight_decay", "maximize"),
               lambda hp: _MOMENTS)
ADAMAX = Kernel(steps_adaptive.adamax_step, ("exp_avgs", "exp_infs"),
                ("betas", "eps", "weight_decay", "maximize"), lambda hp: ("exp_avgs", "exp_infs"))
