"""mur: the multiplicative update rules of Kirtas et al. (2024) for PyTorch, computed by a mur server."""

from . import schedulers  # gamma schedules: mur.schedulers.ExponentialGammaDecay, ...
from .errors import (
    ConnectionLostError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    MurError,
    NotFoundError,
    ResourceExhaustedError,
    TransportUnavailable,
)
from .optimizer import RemoteOptimizer
from .server import LocalServer
from .sharded import ShardedRemoteOptimizer  # what RemoteOptimizer(server=[a, b, ...]) returns

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
    "TransportUnavailable",
    "schedulers",
]
__version__ = "0.1.0"
