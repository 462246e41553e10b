"""The optimizer of GPU training on the host: :class:`Offload`, which
lrfast.torch exports as ``CPUOffload`` (with AdamW for the default
``optimizer``: this module does not import lrfast.torch), and the two transports that move its gradients down and its parameters up (CUDA:
pinned buffers, copy streams and events; CPU: plain copies). Everything but
the transport is the same code on both, which is what the CPU tests cover.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections import defaultdict
from typing import Iterator

import torch

from . import _dtensor, _hparams
from ._prodigy import ProdigyKernel
from .clip import clip_coefficient, global_norm
from .precision import holds_param, mix_seed

__all__ = ["Offload"]

_MASTER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_ALIGN = 64  # bytes: each master and gradient buffer starts on a cache line


class _HostTransport:
    """Params on the CPU: copies are plain, synchronous and cast as needed;
    nothing waits."""

    def pin(self, flat: torch.Tensor) -> None:
        pass

    def send_grad(self, grad: torch.Tensor, buffer: torch.Tensor):
        buffer.copy_(grad)

    def wait(self, tokens) -> None:
        pass

    def begin_step(self) -> None:
        pass

    def send_params(self, pairs):
        for param, master in pairs:
            param.copy_(master)

    def end_step(self, tokens) -> None:
        pass


class _CudaTransport:
    """Params on one CUDA device. Gradients go down on one copy stream (each
    after the work that produced it, on the stream current where its hook
    runs) into pinned host buffers, updated params go up on another, each
    copy followed by an event: the host waits only for the events of what it
    reads or writes next, and the stream that runs the next forward waits for
    the last upload's event (no device-wide synchronisation). A copy between
    different dtypes (a bfloat16 param, its float32 master) converts on the
    GPU, through a device tensor in the master's dtype made on the copy
    stream and freed at once: the caching allocator hands its block to the
    next copy of that stream, so about the largest param's size is in use,
    and nothing is held across steps. (torch's own ``copy_`` would convert a
    host-to-device copy on the host, into pageable memory.)"""

    def __init__(self, device: torch.device):
        self.device = device
        self.down = torch.cuda.Stream(device)
        self.up = torch.cuda.Stream(device)

    def pin(self, flat: torch.Tensor) -> None:
        # Registered pageable memory rather than torch's pinned allocator,
        # which rounds every block up to a power of two (up to 2x the RAM).
        cudart = torch.cuda.cudart()
        pointer = flat.data_ptr()
        error = int(cudart.cudaHostRegister(pointer, flat.untyped_storage().nbytes(), 0))
        if error:
            raise RuntimeError(f"CPUOffload: pinning {flat.numel() * flat.element_size()} bytes "
                               f"of host memory failed (cudaError {error})")
        weakref.finalize(flat, cudart.cudaHostUnregister, pointer)

    def send_grad(self, grad: torch.Tensor, buffer: torch.Tensor):
        self.down.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.down):
            buffer.copy_(grad.to(buffer.dtype), non_blocking=True)
        grad.record_stream(self.down)  # its memory is not reused before the copy ends
        done = torch.cuda.Event()
        done.record(self.down)
        return done

    def wait(self, tokens) -> None:
        for event in tokens:
            if event is not None:
                event.synchronize()

    def begin_step(self) -> None:
        # uploads come after whatever the compute stream has queued on the params
        self.up.wait_stream(torch.cuda.current_stream(self.device))

    def send_params(self, pairs):
        with torch.cuda.stream(self.up):
            for param, master in pairs:
                if param.dtype == master.dtype:
                    param.copy_(master, non_blocking=True)
                else:
                    param.copy_(master.to(self.device, non_blocking=True))
        done = torch.cuda.Event()
        done.record(self.up)
        return done

    def end_step(self, tokens) -> None:
        stream = torch.cuda.current_stream(self.device)
        for event in tokens:
            if event is not None:
                stream.wait_event(event)


class _Entry:
    """One model param: its host master (the param itself where a CPU param
    can be its own master), the host buffer its gradient lands in (None then),
    the gradient last sent (with its version, to notice a later change), the
    token of that copy, and whether the master's ``.grad`` is the buffer."""

    __slots__ = ("param", "master", "buffer", "bucket", "sent", "token", "gives")

    def __init__(self, param, master, buffer, bucket):
        self.param, self.master, self.buffer, self.bucket = param, master, buffer, bucket
        self.sent = self.token = None
        self.gives = False


class _Bucket:
    """Params stepped by one call per group of their own optimizer, which has
    every group of the CPUOffload (empty where none of the group's params are
    here) so that group-level state (schedule-free's ``k``) moves alike."""

    __slots__ = ("optimizer", "entries", "copies", "blocks", "numel", "sent")

    def __init__(self, optimizer):
        self.optimizer, self.numel, self.sent = optimizer, 0, None
        # the host memory its masters and gradient buffers are views of, pinned as long as
        # these tensors live
        self.blocks: list[torch.Tensor] = []
        self.entries: list[_Entry] = []
        self.copies: list[_Entry] = []  # those with a master of their own


def _check_model_param(p, where: str) -> None:
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{where} is a {type(p).__name__}, not a tensor")
    if _dtensor.is_dtensor(p):
        raise TypeError(f"{where} is a DTensor; CPUOffload takes the whole params of one "
                        "process (FSDP2 shards: use the lrfast.torch optimizers)")
    if p.layout != torch.strided:
        raise TypeError(f"{where} is a {p.layout} tensor; CPUOffload updates dense tensors")
    if p.is_complex() or not p.is_floating_point():
        raise TypeError(f"{where} has dtype {p.dtype}; CPUOffload updates real floating-point "
                        "params (float32, bfloat16, float16)")
    if p.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{where} is on {p.device}; CPUOffload takes CPU and CUDA params")


class Offload(torch.optim.Optimizer):
    """Any :mod:`lrfast.torch` optimizer run on the host for a model on the
    GPU, the optimizer's memory in host RAM. ::

        optimizer = lrfast.torch.CPUOffload(model.parameters(), lrfast.torch.AdamW, lr=3e-4,
                                            master_dtype="bfloat16", state_dtype="q8",
                                            max_grad_norm=1.0)

    The model's params stay where they are, in their dtype. The optimizer
    keeps a host master copy of each, of ``master_dtype`` (``"float32"``, or
    ``"bfloat16"``, whose writes then round stochastically unless
    ``stochastic_rounding=False`` is passed; it must hold the param's
    values: a float32 master for float32, bfloat16 and float16 params, a
    bfloat16 one for bfloat16 params), and ``optimizer`` (any lrfast.torch
    optimizer class, built with ``state_dtype`` and ``optimizer_kwargs``)
    keeps its states beside the masters, in host RAM; none of it on the GPU.
    ``optimizer`` defaults to ``lrfast.torch.AdamW``.

    Each gradient starts down to a pinned host buffer of the master's dtype
    as soon as backward has accumulated it (a post-accumulate-grad hook; on a
    copy stream, so the copies overlap the rest of backward). ``step()``
    waits for the gradients of one bucket at a time (``bucket_size``
    elements, about; a param larger than that is a bucket of its own), steps
    it with one native call per param group on lrfast's thread pool, and
    starts its params up (cast to each param's dtype) on another copy stream
    while the next bucket steps; the stream current at the end of ``step()``
    waits for the last upload, so the next forward sees the new params
    without a device-wide synchronisation. Prodigy, whose step begins with a
    sum over every param, steps as one bucket.

    With ``max_grad_norm`` the step clips as
    ``torch.nn.utils.clip_grad_norm_`` does, fused: the gradients' global
    2-norm ``n`` is taken from the host buffers (:func:`lrfast.global_norm`)
    and every update reads ``g * min(1, max_grad_norm / (n + 1e-6))``; the
    gradients are not written. ``last_grad_norm`` holds ``n`` (None without
    ``max_grad_norm``).

    Gradient accumulation: backward accumulates into the params' ``.grad``
    on the GPU as usual; run the backward passes of the micro-batches but
    the last under ``with optimizer.accumulate():`` (or each under ``with
    optimizer.accumulate(micro < micro_batches - 1):``), and the gradients
    are copied once per step, as the last backward produces them. Without it
    each backward copies them again (correct, more traffic). A gradient
    changed after its copy (``zero_grad``, a backward outside
    ``accumulate``, an in-place edit such as ``GradScaler.unscale_``) is
    noticed by its version and copied again at the step, without overlap;
    to clip, pass ``max_grad_norm`` rather than clipping ``.grad``.

    On the CPU (all params CPU tensors) the same pipeline runs with plain
    copies; a float32 param with a float32 master is its own master (no
    copy at all), so that the step equals the plain optimizer's bit for bit.
    The params must all be on one device. Sparse, complex, integer and
    DTensor params raise TypeError.

    ``state_dict()`` is the plain optimizer's (``optimizer``'s over the
    model's params), with one more entry per param whose master has another
    dtype than the param: ``"master"``, the master itself, restored by
    ``load_state_dict`` (which takes a plain optimizer's state dict too, and
    then copies the params into the masters); the plain optimizer loads it
    and carries ``"master"`` unused. The masters are copied from the params
    at construction and ``load_state_dict`` only: load the model's weights
    before building the optimizer or loading its state. ``param_groups``
    are the optimizer's groups (torch LR schedulers attach); schedule-free
    optimizers' ``train()``/``eval()`` work here too. :meth:`host_bytes`
    says what it holds in host RAM.
    """

    _shares_cpu_params = True  # a float32 CPU param serves as its own float32 master

    def __init__(self, params, optimizer: type, *, master_dtype: str = "float32",
                 state_dtype: str | None = None, max_grad_norm: float | None = None,
                 bucket_size: int = 2**25, **optimizer_kwargs):
        # lrfast.torch's classes (which import this module): torch optimizers whose
        # _step takes a fused clip coefficient
        if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)
                and callable(getattr(optimizer, "_step", None))
                and callable(getattr(optimizer, "_kernel", None))):
            raise TypeError(f"optimizer must be an lrfast.torch optimizer class (e.g. "
                            f"lrfast.torch.AdamW), got {optimizer!r}")
        if master_dtype not in _MASTER_DTYPES:
            raise ValueError(f"master_dtype must be 'float32' or 'bfloat16', got {master_dtype!r}")
        if max_grad_norm is not None:
            max_grad_norm = _hparams.real("max_grad_norm", max_grad_norm)
            if not max_grad_norm >= 0:
                raise ValueError(f"max_grad_norm must be a number >= 0 or inf, got "
                                 f"{max_grad_norm!r}")
        if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
            raise ValueError(f"bucket_size must be an int >= 1, got {bucket_size!r}")
        self.master_dtype = _MASTER_DTYPES[master_dtype]
        if master_dtype == "bfloat16":
            optimizer_kwargs.setdefault("stochastic_rounding", True)
        self.max_grad_norm = max_grad_norm
        self.last_grad_norm: float | None = None
        self._class = optimizer
        self._kwargs = dict(optimizer_kwargs, state_dtype=state_dtype)
        # Prodigy's estimate needs every param's sums before any param moves
        self._bucket_size = (math.inf if isinstance(getattr(optimizer, "kernel", None),
                                                    ProdigyKernel) else bucket_size)
        self._buckets: list[_Bucket] = []
        self._entries: dict[torch.Tensor, _Entry] = {}
        self._order: list[_Entry] = []  # in the order of the groups (of the global norm)
        self._copies: list[_Entry] = []  # those with a master of their own, in that order
        # the device of the params, and its transport: set by the first param
        self._device: torch.device | None = None
        self._transport: _HostTransport | _CudaTransport = _HostTransport()
        self._hooks: list = []  # removed when the optimizer goes
        weakref.finalize(self, _remove, self._hooks)
        self._accumulating = False
        self._linked = -1  # how many states self.state mirrors
        # the optimizer's own defaults, its keyword arguments checked
        probe = optimizer([torch.zeros(1, dtype=self.master_dtype)], **self._kwargs)
        super().__init__(params, probe.defaults)

    # -- building: each group's params get masters and join buckets

    def add_param_group(self, param_group) -> None:
        """torch.optim's; the group's params get their host masters and join
        the buckets."""
        index = len(self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._add_group(group, index)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def _add_group(self, group, index: int) -> None:
        params = group["params"]
        for j, p in enumerate(params):
            where = f"param group {index}, parameter {j}"
            _check_model_param(p, where)
            if not holds_param(str(self.master_dtype).removeprefix("torch."),
                               str(p.dtype).removeprefix("torch.")):
                raise ValueError(f"{where} has dtype {p.dtype}, which a {self.master_dtype} "
                                 "master cannot hold; use master_dtype='float32' (bfloat16 "
                                 "masters are for bfloat16 params)")
        hyper = self._hyper(group)
        # the group's hyperparameters checked by the optimizer before anything changes
        self._class([dict(hyper(0), params=[torch.zeros(1, dtype=self.master_dtype)])],
                    **self._kwargs)
        transport = self._transport_for(params)
        chunks: list[tuple[_Bucket, list]] = []  # this group's params per bucket, in order
        bucket = self._buckets[-1] if self._buckets else None
        for p in params:
            if bucket is None or (bucket.numel and bucket.numel + p.numel() > self._bucket_size):
                bucket = _Bucket(None)  # its optimizer comes below
            if not chunks or chunks[-1][0] is not bucket:
                chunks.append((bucket, []))
            chunks[-1][1].append(p)
            bucket.numel += p.numel()
        for b, bucket in enumerate(self._buckets):
            chunk = next((c for owner, c in chunks if owner is bucket), [])
            masters = self._masters(chunk, transport, bucket)
            bucket.optimizer.add_param_group(dict(hyper(b), params=masters))
        for bucket, chunk in chunks:
            if bucket.optimizer is not None:
                continue
            b = len(self._buckets)
            earlier = [dict(self._hyper(g)(b), params=[]) for g in self.param_groups[:-1]]
            masters = self._masters(chunk, transport, bucket)
            bucket.optimizer = self._class(earlier + [dict(hyper(b), params=masters)],
                                           **self._kwargs)
            self._buckets.append(bucket)

    def _transport_for(self, params):
        devices = {p.device for p in params} | ({self._device} if self._device else set())
        if len(devices) > 1:
            raise ValueError(f"CPUOffload's params must all be on one device, got "
                             f"{sorted(map(str, devices))}")
        if self._device is None and devices:
            self._device = devices.pop()
            if self._device.type == "cuda":
                self._transport = _CudaTransport(self._device)
        return self._transport

    def _masters(self, params, transport, bucket: _Bucket) -> list:
        """The params' masters (views of one host block, and their gradient
        buffers of another), filled from the params; hooks registered."""
        own = {id(p) for p in params if self._shares(p)}
        sizes = {id(p): -(-p.numel() * self.master_dtype.itemsize // _ALIGN) * _ALIGN
                 // self.master_dtype.itemsize for p in params if id(p) not in own}
        total = sum(sizes.values())
        flats = [torch.empty(total, dtype=self.master_dtype) for _ in range(2)] if total else []
        for flat in flats:
            transport.pin(flat)
        bucket.blocks += flats
        masters, offset = [], 0
        for p in params:
            if id(p) in own:  # the param itself: its .grad is the master's
                entry = _Entry(p, p, None, bucket)
            else:
                n = p.numel()
                master, buffer = (f[offset:offset + n].view(p.shape) for f in flats)
                offset += sizes[id(p)]
                master.copy_(p.detach())
                entry = _Entry(p, master, buffer, bucket)
                if p.requires_grad:
                    self._hooks.append(p.register_post_accumulate_grad_hook(_hook(self)))
            self._entries[p] = entry
            self._order.append(entry)
            bucket.entries.append(entry)
            if entry.buffer is not None:
                self._copies.append(entry)
                bucket.copies.append(entry)
            masters.append(entry.master)
        return masters

    def _shares(self, p) -> bool:
        return (self._shares_cpu_params and p.device.type == "cpu"
                and p.dtype == self.master_dtype and p.is_contiguous())

    def _hyper(self, group):
        """The keys of bucket ``b``'s copy of ``group``, a function of ``b``:
        the group's but its params, and a seed of the bucket's own, so
        that no two buckets draw the same random bits (bucket 0 keeps the
        group's)."""
        keys = {k: v for k, v in group.items() if k != "params"}
        seed = keys["seed"]
        return lambda b: dict(keys, seed=mix_seed(seed, b) if b else seed)

    # -- gradients

    @contextlib.contextmanager
    def accumulate(self, enabled: bool = True) -> Iterator[None]:
        """Backward passes inside copy no gradient (if ``enabled``): use it
        for the micro-batches of an accumulated step but the last, whose
        backward copies the sums once: ``with
        optimizer.accumulate(micro < micro_batches - 1): loss.backward()``."""
        previous, self._accumulating = self._accumulating, bool(enabled)
        try:
            yield
        finally:
            self._accumulating = previous

    def _send(self, entry: _Entry, grad: torch.Tensor) -> None:
        if grad.layout != torch.strided:
            raise TypeError(f"CPUOffload: a param of shape {tuple(entry.param.shape)} has a "
                            f"{grad.layout} gradient; it updates dense gradients")
        entry.token = self._transport.send_grad(grad, entry.buffer)
        entry.sent = (grad, grad._version)

    # -- the step

    def step(self, closure=None):
        """Copies what the hooks have not, clips if asked, steps bucket by
        bucket and sends each bucket's params back; returns the closure's
        loss, if a closure was given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        transport = self._transport
        transport.begin_step()
        clips = self.max_grad_norm is not None
        # the host gradients, in the order of the groups, for the global norm
        grads: list[torch.Tensor] = []
        for entry in self._order if clips else self._copies:
            grad = entry.param.grad
            if entry.buffer is None:  # its own master
                if grad is not None:
                    grads.append(grad)
                continue
            if grad is None:
                if entry.gives:
                    entry.master.grad, entry.gives = None, False
                continue
            sent = entry.sent
            if sent is None or sent[0] is not grad or sent[1] != grad._version:
                self._send(entry, grad)
            if not entry.gives:
                entry.master.grad, entry.gives = entry.buffer, True
            grads.append(entry.buffer)
        scale, norm = 1.0, None
        if clips:
            transport.wait([entry.token for entry in self._copies])
            norm = self.last_grad_norm = global_norm(grads)
            scale = clip_coefficient(norm, self.max_grad_norm)
        self._to_buckets()
        uploads = []
        for bucket in self._buckets:
            transport.wait([e.token for e in bucket.copies] + [bucket.sent])
            inner = bucket.optimizer
            with inner.lock:
                inner._step(scale, norm)
            bucket.sent = transport.send_params(
                [(e.param.detach(), e.master) for e in bucket.copies if e.gives])
            uploads.append(bucket.sent)
        transport.end_step(uploads)
        for entry in self._copies:  # no gradient kept alive (on the GPU) past the step
            entry.sent = entry.token = None
        self._from_buckets()
        return loss

    def _to_buckets(self) -> None:
        for b, bucket in enumerate(self._buckets):
            for group, inner in zip(self.param_groups, bucket.optimizer.param_groups):
                inner.update(self._hyper(group)(b))

    def _from_buckets(self) -> None:
        """The groups' state (schedule-free's ``k``, Prodigy's ``d``), as the
        buckets' optimizers moved it (alike), and ``self.state`` mirroring
        their states where new ones appeared."""
        if not self._buckets:  # no params
            return
        first = self._buckets[0].optimizer.param_groups
        for group, inner in zip(self.param_groups, first):
            group.update((k, v) for k, v in inner.items() if k not in ("params", "seed"))
        count = sum(len(b.optimizer.state) for b in self._buckets)
        if count != self._linked:
            self._linked = count
            state: defaultdict[torch.Tensor, dict] = defaultdict(dict)
            for p, entry in self._entries.items():
                inner = entry.bucket.optimizer.state
                if entry.master in inner:
                    state[p] = inner[entry.master]
            self.state = state

    # -- schedule-free's train/eval

    def train(self) -> None:
        """The optimizer's ``train()`` (schedule-free: params to y), the
        params updated from the masters."""
        self._switch("train")

    def eval(self) -> None:
        """The optimizer's ``eval()`` (schedule-free: params to x, to
        evaluate and to save), the params updated from the masters."""
        self._switch("eval")

    def _switch(self, name: str) -> None:
        if not hasattr(self._class, name):
            raise AttributeError(f"{self._class.__name__} has no {name}(); CPUOffload's "
                                 f"{name}() is schedule-free's")
        self._to_buckets()
        self._transport.begin_step()
        uploads = []
        for bucket in self._buckets:
            self._transport.wait([bucket.sent])
            getattr(bucket.optimizer, name)()
            bucket.sent = self._transport.send_params(
                [(e.param.detach(), e.master) for e in bucket.copies])
            uploads.append(bucket.sent)
        self._transport.end_step(uploads)
        self._from_buckets()

    # -- checkpoints

    def state_dict(self):
        """The plain optimizer's state dict (see the class docstring), with
        ``"master"`` for params whose master has another dtype."""
        self._linked = -1
        self._from_buckets()
        plain = self.state
        with_masters: defaultdict[torch.Tensor, dict] = defaultdict(dict, plain)
        for p, entry in self._entries.items():
            if entry.master.dtype != p.dtype and p in plain:
                with_masters[p] = dict(plain[p], master=entry.master)
        self.state = with_masters
        try:
            return super().state_dict()
        finally:
            self.state = plain

    def load_state_dict(self, state_dict) -> None:
        """Loads a state dict of this class or of the plain optimizer (see
        the class docstring)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"])
                for s, g in zip(saved_groups, self.param_groups)):
            raise ValueError("loaded state dict has a different number of param groups or "
                             "of params in a group than this optimizer")
        ids = {p: i for g, s in zip(self.param_groups, saved_groups)
               for p, i in zip(g["params"], s["params"])}
        states = state_dict["state"]
        for group, saved in zip(self.param_groups, saved_groups):
            group.update((k, v) for k, v in saved.items() if k != "params")
        for b, bucket in enumerate(self._buckets):
            mine = {id(e.param) for e in bucket.entries}
            groups = [dict(self._hyper(g)(b), params=[ids[p] for p in g["params"]
                                                    if id(p) in mine])
                      for g in self.param_groups]
            kept = {ids[e.param]: {k: v for k, v in states[ids[e.param]].items()
                                   if k != "master"}
                    for e in bucket.entries if ids[e.param] in states}
            bucket.optimizer.load_state_dict({"state": kept, "param_groups": groups})
        with torch.no_grad():
            for entry in self._copies:
                master = states.get(ids[entry.param], {}).get("master")
                entry.master.copy_(entry.param if master is None else master)
        self._linked = -1
        self._from_buckets()

    # -- memory

    def host_bytes(self) -> dict:
        """Host memory held, in bytes: ``"master"`` (the masters; a CPU
        param that is its own master counts here), ``"states"`` (the
        optimizer's states, made at a param's first step), ``"grads"`` (the
        pinned gradient buffers), and per parameter element ``"per_param"``
        (masters and states) and ``"per_param_with_grads"``."""
        def nbytes(t):
            return t.numel() * t.element_size()

        master = sum(nbytes(e.master) for e in self._entries.values())
        grads = sum(nbytes(e.buffer) for e in self._copies)
        states = sum(nbytes(v) for b in self._buckets for s in b.optimizer.state.values()
                     for v in s.values() if isinstance(v, torch.Tensor))
        n = max(1, sum(p.numel() for p in self._entries))
        return {"master": master, "states": states, "grads": grads,
                "per_param": (master + states) / n,
                "per_param_with_grads": (master + states + grads) / n}


def _hook(optimizer: Offload):
    """A post-accumulate-grad hook that sends the param's gradient down,
    holding its optimizer weakly."""
    ref = weakref.ref(optimizer)

    def hook(param: torch.Tensor) -> None:
        opt = ref()
        if opt is not None and not opt._accumulating:
            opt._send(opt._entries[param], param.grad)

    return hook


def _remove(handles: list) -> None:
    for handle in handles:
        handle.remove()
