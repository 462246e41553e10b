"""Prodigy (prodigyopt 1.1.x) for the optimizer classes: two passes per
step and an estimate ``d`` shared by every param group.

A step: ``dlr`` from the first group's ``d`` and ``k`` and the largest of the
groups' rates (:func:`lrfast.prodigy_dlr`); the reduction pass over the
groups whose rate is not 0 (:func:`lrfast.prodigy_reduce`, which updates
``s``); the new estimate on the host (:func:`lrfast.prodigy_d_update`),
written to every group with ``k + 1``; the update pass
(:func:`lrfast.prodigy_update`). When no gradient has reached ``s`` yet
(``|s|`` sums to 0) prodigyopt returns early with only the moments moved:
here the update pass runs at ``dlr = 0``, which moves the moments and leaves
the params, and ``d``, ``k`` and the params' step counts stay.

Sharded params (lrfast.torch's DTensors, e.g. FSDP2's): each rank's pieces
hold its shards, whose sums (``dot``, ``s_abs``, and whether the gradients
are finite) are all-reduced over the ranks holding the other shards
(``Piece.across``) before ``d`` moves, so every rank computes the ``d`` of
the whole params.

The keys prodigyopt reads from the first group only (``betas``, ``beta3``,
``d0``, ``d_coef``, ``growth_rate``, ``decouple``, ``use_bias_correction``)
must be the same in every group (a ValueError otherwise, where prodigyopt
would ignore the others'). A group's rate must be the largest one or 0
(prodigyopt's rule); a group at 0 is left as it is, its params, moments and
``s`` (prodigyopt's matches this while its moments are zero and it has no
decoupled weight decay; otherwise it keeps moving such params).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, MutableMapping, Sequence

from . import _hparams, steps_lr_free
from ._backend import through
from ._kernel import Kernel, Piece, Slot, Update
from .clip import global_norm
from .reference_lr_free import prodigy_d_update, prodigy_dlr

SHARED = ("betas", "beta3", "d0", "d_coef", "growth_rate", "decouple", "use_bias_correction")
# the estimate's group keys (equal in every group)
ESTIMATE = ("d", "d_max", "d_numerator", "k")


@dataclass(frozen=True)
class ProdigyKernel(Kernel):
    def joining(self, group: dict, groups: Sequence[Mapping]) -> dict:
        """The estimate is shared: a new group takes the others' (prodigyopt
        reads it from the first group only)."""
        return {**{key: groups[0][key] for key in ESTIMATE}, **group}

    def validate(self, hparams: Mapping, lr) -> None:
        """Checks a group's options and estimate, by both passes over no tensors."""
        _hparams.non_negative("lr", lr)
        _hparams.positive("d0", hparams["d0"])  # before d, which starts at d0
        _hparams.non_negative("d_coef", hparams["d_coef"])
        if not _hparams.real("growth_rate", hparams["growth_rate"]) > 0:
            raise ValueError(f"growth_rate must be > 0 (inf: unbounded), got "
                             f"{hparams['growth_rate']!r}")
        _hparams.flag("use_bias_correction", hparams["use_bias_correction"])
        _hparams.finite("d_max", hparams["d_max"])
        _hparams.finite("d_numerator", hparams["d_numerator"])
        k = hparams["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an integer >= 0, got {k!r}")
        self._reduce([], [], [], [], hparams, hparams, d=hparams["d"], dlr=0.0, grad_scale=1.0)
        self._update([], [], {"exp_avgs": [], "exp_avg_sqs": []}, hparams, hparams,
                     d=hparams["d"], d_new=hparams["d"], dlr=0.0, grad_scale=1.0, rounding={})

    def check(self, groups: Sequence[Mapping], updates: Sequence[Update], *,
              first_checks_itself: bool = False) -> None:
        first = updates[0].hparams
        lr = max(update.lr for update in updates)
        for index, update in enumerate(updates):
            for key in SHARED + ESTIMATE:
                if update.hparams[key] != first[key]:
                    raise ValueError(f"param group {index} has {key}={update.hparams[key]!r}, "
                                     f"param group 0 {first[key]!r}: Prodigy shares {key} "
                                     "across param groups")
            if update.lr not in (lr, 0.0):
                raise ValueError(f"param group {index} has lr={update.lr!r}: Prodigy's groups "
                                 f"take the largest rate ({lr!r}) or 0")
            self.validate(update.hparams, update.lr)

    def _reduce(self, params, grads, ss, p0s, shared, own, *, d, dlr, grad_scale):
        return self.step(params, grads, ss, p0s, d=d, d0=shared["d0"], dlr=dlr,
                         betas=shared["betas"], beta3=shared["beta3"],
                         weight_decay=own["weight_decay"], decouple=shared["decouple"],
                         safeguard_warmup=own["safeguard_warmup"], slice_p=own["slice_p"],
                         maximize=own["maximize"], grad_scale=grad_scale)

    def _update(self, params, grads, states, shared, own, *, d, d_new, dlr, grad_scale,
                rounding, via=None):
        with through(via):  # lrfast.torch's prepared host calls (see Piece)
            steps_lr_free.prodigy_update(params, grads, states.get("exp_avgs"),
                                         states["exp_avg_sqs"], d=d, d_new=d_new, dlr=dlr,
                                         betas=shared["betas"], eps=own["eps"],
                                         weight_decay=own["weight_decay"],
                                         decouple=shared["decouple"], maximize=own["maximize"],
                                         grad_scale=grad_scale, **rounding)

    def _steps(self, update: Update) -> bool:
        return update.lr > 0  # a group at rate 0 is left as it is

    def _check(self, update: Update, piece: Piece, grad_scale: float, first: bool) -> None:
        """A piece's reduction (but the first, which checks before it
        writes) and its update pass, which follows every reduction's writes.
        The estimate is shared, so ``update``'s own keys hold it too."""
        d = update.hparams["d"]
        if not first:
            self._reduce(piece.params, piece.grads, piece.states["ss"], piece.states["p0s"],
                         update.hparams, update.hparams, d=d, dlr=0.0, grad_scale=grad_scale)
        self._update(piece.params, piece.grads, piece.states, update.hparams, update.hparams,
                     d=d, d_new=d, dlr=0.0, grad_scale=grad_scale, rounding=piece.rounding,
                     via=piece.via)

    def run(self, groups: Sequence[MutableMapping], updates: Sequence[Update],
            grad_scale: float = 1.0, grad_norm: float | None = None) -> None:
        """One step; first, the gradients must be finite (``grad_norm``: their
        global norm, if the caller has it): one inf or NaN would make
        ``d_numerator``, hence ``d`` and every later step, NaN for good."""
        active = [update for update in updates if self._steps(update)]
        # a list, not all(...) of a generator: every piece's all-reduce runs on every rank
        finite = [math.isfinite(grad_norm * grad_scale)] if grad_norm is not None else [
            _finite(piece, grad_scale) for update in active for piece in update.pieces]
        if not all(finite):
            raise ValueError("the gradients hold an inf or NaN: Prodigy's estimate d would "
                             "become NaN for good, so nothing was changed (skip such steps, "
                             "e.g. with skip_nonfinite=True in lrfast.optim or a "
                             "torch.amp.GradScaler)")
        shared = updates[0].hparams
        lr = max(update.lr for update in updates)
        d = shared["d"]
        dlr = prodigy_dlr(d=d, lr=lr, step=shared["k"] + 1, betas=shared["betas"],
                          use_bias_correction=shared["use_bias_correction"])
        dot = s_abs = 0.0
        for update in active:
            for piece in update.pieces:
                part = self._reduce(piece.params, piece.grads, piece.states["ss"],
                                    piece.states["p0s"], shared, update.hparams, d=d, dlr=dlr,
                                    grad_scale=grad_scale)
                if piece.across is not None:  # shards: the sums over the whole params
                    part = piece.across(part)
                dot, s_abs = dot + part[0], s_abs + part[1]
                piece.done(False)
        if not (math.isfinite(dot) and math.isfinite(s_abs)):  # the grads are finite
            raise ValueError("Prodigy's sums over the params are not finite: a param or its "
                             "start copy p0 holds an inf or NaN (d was not changed)")
        new = prodigy_d_update(dot, s_abs, d=d, d0=shared["d0"], d_max=shared["d_max"],
                               d_numerator=shared["d_numerator"], dlr=dlr,
                               betas=shared["betas"], beta3=shared["beta3"],
                               d_coef=shared["d_coef"], growth_rate=shared["growth_rate"])
        if new is None:  # prodigyopt's early return: the moments move, nothing else
            d_new, dlr, advance = d, 0.0, False
        else:
            for group in groups:
                group.update(new._asdict(), k=group["k"] + 1)
            d_new, advance = new.d, True
        for update in updates:
            for piece in update.pieces:
                if self._steps(update):
                    self._update(piece.params, piece.grads, piece.states, shared,
                                 update.hparams, d=d, d_new=d_new, dlr=dlr,
                                 grad_scale=grad_scale, rounding=piece.rounding,
                                 via=piece.via)
                piece.done(advance)  # a group at rate 0 counts the step, as prodigyopt


def _finite(piece: Piece, grad_scale: float) -> bool:
    """Whether the piece's gradients are finite, on every rank that holds a
    shard of them (each rank then raises, or none does)."""
    bad = not math.isfinite(global_norm(piece.grads) * grad_scale)
    if piece.across is not None:
        bad = piece.across([bad])[0] > 0
    return not bad


def _uses(hparams: Mapping) -> tuple[str, ...]:
    first_moment = ("exp_avgs",) if hparams["betas"][0] > 0 else ()
    return ("ss", "p0s") + first_moment + ("exp_avg_sqs",)


PRODIGY = ProdigyKernel(
    steps_lr_free.prodigy_reduce, ("ss", "p0s", "exp_avgs", "exp_avg_sqs"),
    ("betas", "beta3", "eps", "weight_decay", "decouple", "use_bias_correction",
     "safeguard_warmup", "d0", "d_coef", "growth_rate", "slice_p", "maximize") + ESTIMATE,
    _uses, slots={"ss": Slot(sliced=True),
                  "p0s": Slot(copies_param=True, sliced=True, param_dtype=True)})

# the estimate's group keys at the start, from d0
def start(d0: float) -> dict:
    return {"d": d0, "d_max": d0, "d_numerator": 0.0, "k": 0}
