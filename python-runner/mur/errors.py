"""Server errors as Python exceptions, by gRPC status, with the server's message."""
import grpc


class MurError(RuntimeError):
    """A mur server refused or failed a call; ``code`` is the gRPC status."""

    code = None

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


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


RESUME = ("To resume: create a new RemoteOptimizer and call opt.load_state_dict(<your last checkpoint>) "
          "(a state_dict() you saved).")


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


_BY_CODE = {c.code: c for c in (InvalidArgumentError, NotFoundError, FailedPreconditionError,
                                ResourceExhaustedError, ConnectionLostError, DeadlineExceededError, DataLossError)}

# The server's messages about its --state-dir disk (session/durable.ts) begin with this.
_STORAGE = "state dir "


def from_status(code: grpc.StatusCode, details: str) -> MurError:
    """The MurError of a gRPC status and its message (gRPC calls and the tcp data plane)."""
    cls = _BY_CODE.get(code, MurError)
    if details.startswith(_STORAGE):
        cls = {grpc.StatusCode.RESOURCE_EXHAUSTED: StorageFullError, grpc.StatusCode.UNAVAILABLE: StorageIOError}.get(code, cls)
    message = f"{details} [{code.name}]"
    if cls is DataLossError:
        message += " " + RESUME
    return cls(message, code)


def from_rpc_error(e: grpc.RpcError) -> MurError:
    return from_status(e.code(), e.details() or "")
