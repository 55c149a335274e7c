"""Server errors as Python exceptions, by gRPC status, with the server's message."""

from typing import cast

import grpc


class MurError(RuntimeError):
    """A mur server refused or failed a call; ``code`` is the gRPC status."""

    code: grpc.StatusCode | None = None
    reason = None  # the server's ``mur-reason`` trailing metadata, e.g. ARENA_GONE (None: none given)

    def __init__(self, message, code=None, reason=None):
        super().__init__(message)
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason


class InvalidArgumentError(MurError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(MurError, KeyError):
    code = grpc.StatusCode.NOT_FOUND

    def __str__(self):  # KeyError would quote the message
        return self.args[0]


class FailedPreconditionError(MurError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(MurError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ConnectionLostError(MurError, ConnectionError):
    code = grpc.StatusCode.UNAVAILABLE


class ServerUnreachableError(MurError, ConnectionError):
    """The server was never reached (nothing listens at the address, a wrong
    host, TLS refused): unlike ConnectionLostError, no session exists yet."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(MurError, TimeoutError):
    """The server did not answer within the call's deadline (RemoteOptimizer's ``timeout``)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class TransportUnavailable(MurError):
    """A transport ("shm" or "tcp") cannot be used here; ``reason`` says why.

    A MurError (so a RuntimeError) like every other failure of mur: with
    ``transport="auto"`` it only means "use the next one"; ``transport="shm"``
    or ``"tcp"`` raises it.
    """

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, reason, transport="shm"):
        super().__init__(f"{transport} transport unavailable: {reason}")
        self.reason = reason
        self.transport = transport


RESUME = (
    "To resume: create a new RemoteOptimizer and call opt.load_state_dict(<your last checkpoint>) "
    "(a state_dict() you saved)."
)


class DataLossError(MurError):
    """The server's kept state of this session (``--state-dir``) failed its
    checks: the message names the file and what failed. Never retried: the
    session is gone; resume from a checkpoint (``RESUME`` says how)."""

    code = grpc.StatusCode.DATA_LOSS


class StorageFullError(ResourceExhaustedError):
    """The server's ``--state-dir`` is full: the step (or call) was not
    applied. Not retried: once there is room, calling ``step()`` again with the
    same gradients applies it."""


class StorageIOError(ConnectionLostError):
    """An I/O error of the server's ``--state-dir``: the step (or call) was
    not applied. Retried like a lost connection (it is safe: nothing was
    applied) for up to ``reconnect_timeout``, then raised."""


_BY_CODE = {
    c.code: c
    for c in (
        InvalidArgumentError,
        NotFoundError,
        FailedPreconditionError,
        ResourceExhaustedError,
        ConnectionLostError,
        DeadlineExceededError,
        DataLossError,
    )
}

# The server's messages about its --state-dir disk (session/durable.ts) begin with this.
_STORAGE = "state dir "


# The trailing-metadata key by which the server says why a call failed, for
# the client to act on without reading the message (ts-server/src/errors.ts).
REASON_KEY = "mur-reason"
ARENA_GONE = "arena-gone"  # the session has no shared-memory arena (a server restarted on --state-dir)
NO_DEFAULT_SPEC = "no-default-spec"  # CreateSession without a spec, and the server has no --config
# The server's --state-dir full / failing (nothing applied): by reason, or on tcp by its message's start.
_STORAGE_REASONS = {"disk-full": StorageFullError, "disk-io": StorageIOError}


def _reason(e: grpc.RpcError):
    try:
        trailers = e.trailing_metadata() or ()
    except Exception:  # an RpcError that is not a call (e.g. raised by a test double)
        return None
    # grpc's stubs type the entries as _Metadatum; at run time they are (key, value) pairs.
    pairs = cast("tuple[tuple[str, str | bytes], ...]", tuple(trailers))
    return next((v for k, v in pairs if k == REASON_KEY), None)


def error_for(code, message, reason=None, rename=None) -> MurError:
    """The MurError for a status (a grpc.StatusCode, or its number as the
    tcp data plane sends it) and the server's message, passed through
    ``rename`` (which names parameters and groups as the user knows them)."""
    if not isinstance(code, grpc.StatusCode):
        code = next((s for s in grpc.StatusCode if s.value[0] == code), code)
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    cls = _BY_CODE.get(status, MurError)
    if reason in _STORAGE_REASONS:
        cls = _STORAGE_REASONS[reason]
    elif message.startswith(_STORAGE):
        cls = {grpc.StatusCode.RESOURCE_EXHAUSTED: StorageFullError, grpc.StatusCode.UNAVAILABLE: StorageIOError}.get(
            status, cls
        )
    text = f"{rename(message) if rename else message} [{name}]"
    if cls is DataLossError:
        text += " " + RESUME
    return cls(text, status, reason=reason)


def from_rpc_error(e: grpc.RpcError, rename=None) -> MurError:
    """The MurError of a failed gRPC call, with the server's message and reason."""
    return error_for(e.code(), e.details() or "", reason=_reason(e), rename=rename)
