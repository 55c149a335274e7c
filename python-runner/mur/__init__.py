"""mur: the multiplicative update rules of Kirtas et al. (2024) for PyTorch, computed by a mur server."""
from .errors import (ConnectionLostError, DataLossError, DeadlineExceededError, FailedPreconditionError,
                     InvalidArgumentError, MurError, NotFoundError, ResourceExhaustedError, ServerUnreachableError,
                     StorageFullError, StorageIOError, TransportUnavailable)
from .optimizer import RemoteOptimizer
from .sharded import ShardedRemoteOptimizer  # what RemoteOptimizer(server=[a, b, ...]) builds
from .server import LocalServer
from . import schedulers  # noqa: E402  (gamma schedules: mur.schedulers.ExponentialGammaDecay, ...)
from . import compat as _compat

_compat.eager_step(RemoteOptimizer)
_compat.eager_step(ShardedRemoteOptimizer)
_compat.pickle_schedulers()

__all__ = ["RemoteOptimizer", "ShardedRemoteOptimizer", "LocalServer", "MurError", "InvalidArgumentError", "NotFoundError",
           "FailedPreconditionError", "ResourceExhaustedError", "ConnectionLostError", "DeadlineExceededError",
           "ServerUnreachableError", "TransportUnavailable", "DataLossError", "StorageFullError", "StorageIOError",
           "schedulers"]
__version__ = "0.1.0"
