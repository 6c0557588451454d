"""Errors lizardlm raises for bad input; the CLI prints them as one line and exits non-zero."""


class LizardError(Exception):
    """Base class: a problem with the user's input or files, with a message that says what to do."""


class UnsupportedModelError(LizardError):
    """The model's architecture cannot be converted."""


class TeacherNotFoundError(LizardError):
    """A teacher name, path or file could not be resolved or loaded."""


class DataError(LizardError):
    """Training or evaluation data is missing, empty, unreadable or malformed."""


class CheckpointError(LizardError):
    """A checkpoint or run directory is missing, corrupt, or belongs to another teacher/config."""


class TrainingError(LizardError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


class TrainingStopped(TrainingError):
    """Training stopped on a signal (SIGTERM, Ctrl-C) after saving a checkpoint at the step it reached."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class UnsupportedInputError(LizardError, ValueError):
    """A model input Lizard layers cannot take (a foreign cache, left padding)."""
