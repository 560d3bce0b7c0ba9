"""Backends run kernels on buffers. base.py defines the protocol and the registry; cpu.py and opencl.py
implement it. Nothing above this package knows which one it is talking to."""

from femto.backend.base import BACKENDS, Backend, get_backend

__all__ = ["BACKENDS", "Backend", "get_backend"]
