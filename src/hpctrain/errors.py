"""One family of exceptions for everything hpctrain rejects.

Every message says what was given, what was expected and what to do about it, so that a user
can fix the call without reading hpctrain's source.
"""


class HpctrainError(Exception):
    """Base class of every error hpctrain raises on purpose."""


class InputError(HpctrainError, ValueError):
    """The data handed to fit/evaluate/predict cannot be trained on as given."""


class ConfigError(HpctrainError, ValueError):
    """An argument, a name (loss, optimizer, metric, activation) or a combination of them is invalid."""


class NotCompiledError(HpctrainError, RuntimeError):
    """A model was trained or evaluated before ``compile`` gave it a loss and an optimizer."""


class NonFiniteLossError(HpctrainError, FloatingPointError):
    """Training produced a NaN or infinite loss."""


class ReplicaFailed(HpctrainError, RuntimeError):
    """A replica spawned at ``fit`` raised or died; the others were stopped. The message names its rank."""


class CheckpointError(HpctrainError, OSError):
    """A checkpoint could not be written (the previous one is kept) or read back intact."""


class HpctrainWarning(UserWarning):
    """A value was accepted but interpreted in a way the user should know about."""


def valid_names_hint(names) -> str:
    return "valid names: " + ", ".join(sorted(names))


_warns_in_this_process = True


def warn_only_on_rank_zero(rank: int) -> None:
    """Called by a replica as it joins its group: every replica meets the same data and settings,
    so rank 0 alone says what it noticed, once, instead of once per process."""
    global _warns_in_this_process
    _warns_in_this_process = rank == 0


def warn(message: str) -> None:
    """Warn, pointing at the user's line that called into hpctrain rather than at hpctrain's own."""
    import os
    import sys
    import warnings

    if not _warns_in_this_process:
        return

    package_dir = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package_dir):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, HpctrainWarning, stacklevel=level)


class MissingDependencyError(HpctrainError, ImportError):
    """An optional package that a feature needs is not installed."""
