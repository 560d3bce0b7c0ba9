"""Every error femto raises on purpose. The CLI shows a FemtoError as one line; anything else is a bug."""


class FemtoError(Exception):
    """Base class: a problem the user can fix, described with the numbers that show it."""


class ShapeError(FemtoError, ValueError):
    """A tensor of the wrong shape or dtype reached an op."""


class BackendMismatch(FemtoError, ValueError):
    """An op given tensors that live on different backends (say one on the CPU, one on OpenCL)."""


class TokenIdError(FemtoError, IndexError):
    """A token id outside the embedding table."""


class ConfigError(FemtoError, ValueError):
    """A model or training option out of range, or in conflict with a saved run."""


class CheckpointError(FemtoError):
    """A run directory or checkpoint file that is missing, truncated, corrupt or from another model."""


class TokenizerError(FemtoError):
    """Text a tokenizer cannot encode, a vocabulary size it cannot train, or a broken tokenizer file."""


class DatasetError(FemtoError):
    """A corpus that is missing, empty, not UTF-8, malformed or too short."""


class BackendUnavailable(FemtoError):
    """A backend that cannot run here (extension not built, no OpenCL platform, no such device)."""


class ExtensionBuildError(BackendUnavailable, ImportError):
    """femto._cpu is missing or was built from other sources than the ones next to it."""


class KernelBuildError(FemtoError):
    """An OpenCL kernel file failed to compile; the message carries the file and the build log."""


class TrainingDiverged(FemtoError):
    """Training reached a non-finite or exploding state; the last checkpoint was kept."""


class WriteFailed(FemtoError):
    """A file could not be written (disk full, size limit, read-only, no permission, I/O error); the
    message names the file and the cause, and the partial file is already removed."""
