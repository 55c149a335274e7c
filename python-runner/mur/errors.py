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


_BY_CODE = {c.code: c for c in (InvalidArgumentError, NotFoundError, FailedPreconditionError,
                                ResourceExhaustedError, ConnectionLostError, DeadlineExceededError)}


def from_rpc_error(e: grpc.RpcError) -> MurError:
    code = e.code()
    cls = _BY_CODE.get(code, MurError)
    return cls(f"{e.details()} [{code.name}]", code)
