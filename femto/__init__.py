"""femto: train and sample GPT language models on OpenMP C or OpenCL kernels, without PyTorch."""

__version__ = "0.1.0"

# Importing the CPU backend checks that the C extension is built and current, and says how to rebuild.
from femto.backend import cpu as _cpu_backend  # noqa: F401
