"""mur: the multiplicative update rules of Kirtas et al. (2024) for PyTorch, computed by a mur server."""

from . import compat as _compat
from . import schedulers
from .errors import (
    ConnectionLostError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    MurError,
    NotFoundError,
    ResourceExhaustedError,
    ServerUnreachableError,
    StorageFullError,
    StorageIOError,
    TransportUnavailable,
)
from .optimizer import RemoteOptimizer
from .server import LocalServer
from .sharded import ShardedRemoteOptimizer  # what RemoteOptimizer(server=[a, b, ...]) builds

_compat.eager_step(RemoteOptimizer)
_compat.eager_step(ShardedRemoteOptimizer)
_compat.pickle_schedulers()

__all__ = [
    "RemoteOptimizer",
    "ShardedRemoteOptimizer",
    "LocalServer",
    "MurError",
    "InvalidArgumentError",
    "NotFoundError",
    "FailedPreconditionError",
    "ResourceExhaustedError",
    "ConnectionLostError",
    "DeadlineExceededError",
    "ServerUnreachableError",
    "TransportUnavailable",
    "DataLossError",
    "StorageFullError",
    "StorageIOError",
    "schedulers",
]
__version__ = "0.1.0"
