"""Errors raised by ailora. Every message is one line that names what is wrong."""


class AiloraError(ValueError):
    """Bad input or a failed check; the CLI prints ``error: <message>`` and exits with status 2."""


class ExactnessError(AiloraError):
    """An initialisation, conversion or merge changed the model's outputs beyond tolerance."""


class TrainingFailedError(AiloraError):
    """Training stopped because it went wrong (a non-finite loss at ``step``); the run directory keeps
    its last good checkpoint and records the run as failed (``failed.json``), never as complete."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def first_line(exc: BaseException) -> str:
    """The first non-empty line of a dependency's exception (else its type's name): what a one-line
    ``AiloraError`` quotes of it."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
