"""Optimizer state dicts that cross between lrfast.torch and other libraries:
out to torch.optim (and lion-pytorch, schedulefree, prodigyopt) with
:func:`to_float_state_dict`, in from bitsandbytes' 8-bit Adam with
:func:`from_bitsandbytes` (which ``lrfast.torch``'s ``load_state_dict`` calls).
torchao's 4-bit states come in through ``lrfast.torch._from_torchao``."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .precision import BLOCK, Q4State, Q8State, create_dynamic_map

# the group keys every lrfast.torch class adds to its counterpart's
_LRFAST_KEYS = ("state_dtype", "stochastic_rounding", "seed")
# (a key only that class's groups hold, the further lrfast-only keys) for the
# classes whose counterpart is not in torch.optim: lion-pytorch keeps
# decoupled_weight_decay and the initial lr on the optimizer, not in groups,
# and none of the three takes maximize
_COUNTERPART_KEYS = (("init_lr", ("init_lr", "decoupled_weight_decay", "maximize")),  # Lion
                     ("train_mode", ("maximize",)),  # ScheduleFreeSGD, ScheduleFreeAdamW
                     ("d_coef", ("maximize",)))  # Prodigy
_LOW_BIT_PARTS = ("_codes", "_absmax", "_signed", "_shape")

# bitsandbytes' state_dict() nests its quantization tensors under this key, so
# that FSDP does not gather them; its optimizers' own state has them flat
_BNB_NESTED = "__bnb_optimizer_quant_state__"
# group keys of bitsandbytes' 8-bit Adam that lrfast's Adam does not take
# (AdEMAMix's, whose third beta is refused instead)
_BNB_ONLY_KEYS = ("alpha", "t_alpha", "t_beta3")


def _check_state_dict(state_dict, name: str) -> None:
    if not (isinstance(state_dict, Mapping) and isinstance(state_dict.get("state"), Mapping)
            and isinstance(state_dict.get("param_groups"), list)):
        raise TypeError(f"{name}: expected an optimizer state dict (a dict with 'state', a "
                        f"dict, and 'param_groups', a list), got {type(state_dict).__name__}")


def to_float_state_dict(state_dict) -> dict:
    """The state dict of an ``lrfast.torch`` optimizer as its counterpart's,
    to leave lrfast: ``torch.optim.SGD``, ``Adam``, ``AdamW``, ``RMSprop``,
    ``Adagrad`` and ``Adadelta`` (for lrfast.torch's classes of those names),
    ``lion_pytorch.Lion``, ``schedulefree.SGDScheduleFree`` /
    ``AdamWScheduleFree`` and ``prodigyopt.Prodigy`` load it and go on training.

    Each q8 or q4 state (``<key>_codes``, ``_absmax``, ``_signed``, and
    ``_shape`` for q4) becomes the float32 tensor it dequantizes to
    (:meth:`lrfast.Q8State.dequantize`), under torch's key (``exp_avg``,
    ``momentum_buffer``, ...), in the state's shape (the parameter's; q4
    codes are flat, the shape is ``<key>_shape``), on the codes' device;
    bfloat16 and float16 states become float32 (torch.optim casts states to
    the parameter's dtype as it loads them). ``step`` and the other
    entries are kept. The group keys only lrfast takes are removed:
    ``state_dtype``, ``stochastic_rounding`` and ``seed``, and for Lion,
    schedule-free and Prodigy ``maximize`` (their counterparts cannot maximize:
    ``maximize=True`` raises ValueError), for Lion also ``init_lr`` and
    ``decoupled_weight_decay``, which ``lion_pytorch.Lion`` takes from its
    constructor: make it with the lrfast Lion's ``lr`` and
    ``decoupled_weight_decay``.

    ``state_dict`` is not changed; the result shares the tensors it keeps
    with it, as ``state_dict()`` shares them with the optimizer (the loading
    optimizer may then update them in place: pass a copy, or the result of
    ``torch.load``, to keep them apart). A low-bit state that is incomplete
    or inconsistent raises ValueError or TypeError naming it.
    """
    _check_state_dict(state_dict, "to_float_state_dict")
    groups = [_counterpart_group(group, i) for i, group in enumerate(state_dict["param_groups"])]
    state = {k: _float_state(v, f"state {k!r}") if isinstance(v, Mapping) else v
             for k, v in state_dict["state"].items()}
    return {**state_dict, "state": state, "param_groups": groups}


def _counterpart_group(group, index: int) -> dict:
    drop = set(_LRFAST_KEYS)
    for marker, keys in _COUNTERPART_KEYS:
        if marker in group:
            drop.update(keys)
    if "maximize" in drop and group.get("maximize"):
        raise ValueError(f"param group {index}: maximize=True; lion-pytorch, schedulefree and "
                         "prodigyopt cannot maximize: they would train the other way")
    return {key: value for key, value in group.items() if key not in drop}


def _float_state(state, where: str) -> dict:
    out = {}
    for entry, value in state.items():
        if entry.endswith("_codes"):
            out[entry[:-len("_codes")]] = _dequantized(state, entry[:-len("_codes")], where)
        elif any(entry.endswith(part) and entry[:-len(part)] + "_codes" in state
                 for part in _LOW_BIT_PARTS):
            continue  # read with its codes
        elif isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
            out[entry] = value.float()
        else:
            out[entry] = value
    return out


def _dequantized(state, key: str, where: str) -> torch.Tensor:
    """The float32 values of the low-bit state ``key`` of one parameter."""
    missing = [key + part for part in ("_absmax", "_signed") if key + part not in state]
    if missing:
        raise ValueError(f"{where}: low-bit state {key!r} lacks {missing}")
    codes, absmax = state[f"{key}_codes"], state[f"{key}_absmax"]
    if not (isinstance(codes, torch.Tensor) and isinstance(absmax, torch.Tensor)):
        raise TypeError(f"{where}: {key}_codes and {key}_absmax must be tensors, got "
                        f"{type(codes).__name__} and {type(absmax).__name__}")
    host_codes, host_absmax = (t.detach().cpu().contiguous().numpy() for t in (codes, absmax))
    signed = state[f"{key}_signed"]
    try:
        if f"{key}_shape" in state:
            values = Q4State(host_codes, host_absmax, state[f"{key}_shape"], signed).dequantize()
        else:
            values = Q8State(host_codes, host_absmax, signed).dequantize()
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}, low-bit state {key!r}: {exc}") from exc
    return torch.from_numpy(values).to(codes.device)


def is_bitsandbytes(state_dict) -> bool:
    """Whether ``state_dict`` is one of bitsandbytes' optimizers (its
    per-parameter ``state1``, flat or nested, or AdEMAMix-era group keys)."""
    return (any(isinstance(s, Mapping) and ("state1" in s or _BNB_NESTED in s)
                for s in state_dict["state"].values())
            or any("t_beta3" in group for group in state_dict["param_groups"]))


def from_bitsandbytes(state_dict) -> dict:
    """A bitsandbytes ``Adam8bit``/``AdamW8bit`` (or 32-bit ``Adam``/``AdamW``)
    state dict as lrfast.torch ``Adam``'s: ``state1`` becomes ``exp_avg``,
    ``state2`` ``exp_avg_sq``, as q8 entries holding bitsandbytes' own codes
    and absmax (its maps are lrfast's q8 maps, which is checked, so they
    dequantize to its values exactly), or as float32 tensors where
    bitsandbytes kept 32-bit states (parameters under its ``min_8bit_size``);
    ``step`` becomes torch's float32 tensor. Groups lose bitsandbytes' own
    keys (``alpha``, ``t_alpha``, ``t_beta3``) and get
    ``decoupled_weight_decay=True``: bitsandbytes' Adam decays weights as
    AdamW does. Other states (``unorm_vec``) are dropped: lrfast has no
    ``max_unorm``. A state or group that does not fit raises ValueError or
    TypeError naming it, before the loading optimizer changes."""
    groups = [_adam_group(group, i) for i, group in enumerate(state_dict["param_groups"])]
    state = {k: _adam_state(v, f"state {k!r}") for k, v in state_dict["state"].items()}
    return {**state_dict, "state": state, "param_groups": groups}


def _adam_group(group, index: int) -> dict:
    betas = group.get("betas", ())
    if len(betas) != 2:
        raise ValueError(f"param group {index}: betas {betas!r}; lrfast.torch.Adam takes two "
                         "(three are bitsandbytes' AdEMAMix, which lrfast does not have)")
    kept = {key: value for key, value in group.items() if key not in _BNB_ONLY_KEYS}
    return {**kept, "decoupled_weight_decay": True}


def _adam_state(state, where: str) -> dict:
    if not isinstance(state, Mapping):
        raise TypeError(f"{where}: expected a dict, got {type(state).__name__}")
    flat = {**state, **state.get(_BNB_NESTED, {})}
    m, v = flat.get("state1"), flat.get("state2")
    if not (isinstance(m, torch.Tensor) and isinstance(v, torch.Tensor)):
        raise ValueError(f"{where}: bitsandbytes' Adam keeps tensors state1 and state2; got "
                         f"{type(m).__name__} and {type(v).__name__} (another bitsandbytes "
                         "optimizer?)")
    if m.shape != v.shape:
        raise ValueError(f"{where}: state1 of shape {tuple(m.shape)} and state2 of shape "
                         f"{tuple(v.shape)}; Adam's moments have the parameter's")
    if m.dtype == v.dtype == torch.uint8:
        entries = {**_bnb_q8(flat, 1, "exp_avg", True, where),
                   **_bnb_q8(flat, 2, "exp_avg_sq", False, where)}
    elif m.is_floating_point() and v.is_floating_point():
        entries = {"exp_avg": m.detach().clone(), "exp_avg_sq": v.detach().clone()}
    else:
        raise TypeError(f"{where}: state1 of {m.dtype} and state2 of {v.dtype}; bitsandbytes "
                        "keeps both uint8 (8-bit) or both float32")
    return {"step": torch.tensor(float(flat.get("step", 0)), dtype=torch.float32), **entries}


def _bnb_q8(flat, n: int, key: str, signed: bool, where: str) -> dict:
    """The q8 entries of lrfast's ``key`` from bitsandbytes' ``state<n>``,
    ``absmax<n>`` and ``qmap<n>``, checked."""
    codes, absmax, qmap = (flat.get(f"{name}{n}") for name in ("state", "absmax", "qmap"))
    if not (isinstance(absmax, torch.Tensor) and isinstance(qmap, torch.Tensor)):
        raise ValueError(f"{where}: an 8-bit state{n} needs tensors absmax{n} and qmap{n} "
                         "(lrfast reads block-wise 8-bit states only)")
    which = "signed" if signed else "unsigned"
    if not torch.equal(qmap.detach().cpu(), torch.from_numpy(create_dynamic_map(signed))):
        raise ValueError(f"{where}: qmap{n} is not bitsandbytes' {which} dynamic map, "
                         "the one lrfast's q8 states index")
    blocks = -(-codes.numel() // BLOCK)
    if absmax.dtype != torch.float32 or tuple(absmax.shape) != (blocks,):
        raise ValueError(f"{where}: absmax{n} is {absmax.dtype} of shape {tuple(absmax.shape)}; "
                         f"state{n}'s {codes.numel()} codes in blocks of {BLOCK} need {blocks} "
                         "float32 scales (lrfast reads bitsandbytes' blocksize 256 only)")
    return {f"{key}_codes": codes.detach().clone(), f"{key}_absmax": absmax.detach().clone(),
            f"{key}_signed": signed}
