"""The data planes (one module each, one interface: planes/base.py):
``shm`` (the server's shared-memory arena, same host), ``tcp`` (the server's
data port) and ``grpc`` (tensors in gRPC messages)."""

from .base import Plane, PreparedStep

__all__ = ["Plane", "PreparedStep"]
