"""What every data plane implements (``Plane``), the step it is given
(``PreparedStep``), and the tensor helpers the planes share."""

import functools
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from google.protobuf import struct_pb2

from .._proto.mur.v1 import optimizer_pb2 as pb

F32, BF16, F16 = pb.DTYPE_FLOAT32, pb.DTYPE_BFLOAT16, pb.DTYPE_FLOAT16
ELEMENT_BYTES = {F32: 4, BF16: 2, F16: 2}
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}
# Parameter dtypes the server takes: it keeps a float32 master copy of each
# (float64 parameters are computed in float32 too); the client casts.
PARAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def struct_of(d):
    """A protobuf Struct of a dict of wire values."""
    s = struct_pb2.Struct()
    s.update(d)
    return s


@dataclass
class PreparedStep:
    """One step as the optimizer prepared it for a plane: its number, the
    parameters with a gradient (in order), those whose group maximizes
    (the server is sent -grad) and the groups' hyperparameters as plain wire
    values (``hypers``, one dict per group: what the shm fast lane compares,
    dict by dict, with the hyperparameters it holds); ``overrides`` the
    Structs an RPC sends, built only when a step goes by RPC (a protobuf
    Struct costs more than a whole small step through the lane)."""

    number: int
    grads: list  # [(param id, parameter)]
    maximized: frozenset
    hypers: list  # [{name: wire value}] by group index
    # L-BFGS (optimizer "lbfgs"): the round of the step and the closure's loss
    # there (StepRequest.round, .loss); None for every other optimizer.
    round: int | None = None
    loss: float | None = None

    @functools.cached_property
    def overrides(self):
        return {f"g{i}": struct_of(h) for i, h in enumerate(self.hypers)}

    def request(self, **fields):
        if self.loss is not None:
            fields.update(round=self.round or 0, loss=self.loss)
        return pb.StepRequest(
            session_id=fields.pop("session_id"), step=self.number, group_overrides=self.overrides, **fields
        )


class Plane(ABC):
    """A data plane: how a step's tensors reach the server and the new
    parameter values come back. ``open`` raises TransportUnavailable when
    this plane cannot be used; the rest is the same for every plane."""

    name: str | None = None  # "shm", "tcp" or "grpc"
    lane_steps = 0  # steps rung through the shm fast lane (no RPC)

    @classmethod
    @abstractmethod
    def open(cls, session, **options):
        """The plane for `session` (a mur.session.Session), or TransportUnavailable."""

    @abstractmethod
    def step(self, prep):
        """Applies `prep` on the server (once, whatever retries it takes) and
        leaves the new values in the parameters."""

    @abstractmethod
    def validate(self, prep):
        """Every check of `prep` on the server, nothing applied; raises as step would."""

    @abstractmethod
    def close(self):
        """Lets go of the plane; the parameters keep (or get) their own memory."""

    def step_coming(self):  # noqa: B027 (an optional hook: a no-op unless the plane needs it)
        """step() has begun (its gradients are final): a plane may get the
        server ready while the step is prepared (shm: Lane.prewake)."""

    def sync(self):  # noqa: B027 (an optional hook: a no-op unless the plane needs it)
        """Makes the server's parameter values the client's (before an export
        or import, or new parameters joining)."""

    def values_imported(self, values):  # noqa: B027 (an optional hook: a no-op unless the plane needs it)
        """ImportState wrote these parameter values ({pid: flat float32
        tensor}) and, on shm, others into the arena: the parameters follow."""

    def params_added(self, pids):  # noqa: B027 (an optional hook: a no-op unless the plane needs it)
        """AddParameters declared these parameters; TransportUnavailable if
        this plane cannot carry them (the optimizer then moves to gRPC)."""


class MixedMarks:
    """Parameters that are not float32: the server holds a float32 master, so
    an edit is told by the parameter's own bits changing since the server's
    value was last written into it (or sent)."""

    def __init__(self):
        self._bits = {}

    def mark(self, pid, p):
        self._bits[pid] = (p.dtype, raw_bits(p).clone())

    def unchanged(self, pid, p):
        mark = self._bits.get(pid)
        return mark is not None and mark[0] == p.dtype and torch.equal(raw_bits(p), mark[1])


def f32_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to(dtype=torch.float32, device="cpu").contiguous().numpy().tobytes()


def f32_view(t: torch.Tensor) -> memoryview:
    """The float32 bytes of a tensor without a copy where it already is float32 CPU memory."""
    return memoryview(t.detach().to(dtype=torch.float32, device="cpu").contiguous().numpy()).cast("B")


def read_only_view(data: bytes, dtype=np.float32) -> torch.Tensor:
    """A tensor over the reply's bytes with no copy. torch warns that the
    buffer is read-only; it is only ever read, so that is safe."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.frombuffer(data, dtype=dtype))


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns of t, flat, on the CPU (bitwise comparison)."""
    return t.detach().reshape(-1).view(torch.int32).cpu()


def raw_bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of t in its own dtype, flat, on the CPU (edit detection of
    parameters that are not float32, whose values are not the server's bits)."""
    t = t.detach().reshape(-1)
    return t.view(_INT_OF_SIZE[t.element_size()]).cpu()


def view_key(t: torch.Tensor) -> tuple:
    """What makes a dense tensor the view it is: memory, shape, strides, dtype
    (two dense tensors with equal keys view the same elements the same way)."""
    return (t.data_ptr(), t.shape, t.stride(), t.dtype)


def is_view_of(t, view) -> bool:
    """t is exactly `view` (same memory, shape and strides): an arena view."""
    return (
        t is not None
        and not t.is_sparse  # a sparse gradient (planes/rows.py) views nothing
        and view_key(t) == view_key(view)
    )


def copy_all(dst: list, src: list) -> None:
    """dst[i].copy_(src[i]) for every i: one foreach call where torch has it
    (>= 2.1: a few microseconds a tensor less, which a model of hundreds of
    small tensors pays at every step), else one call a tensor."""
    if not dst:
        return
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)
