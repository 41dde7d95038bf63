"""Errors raised by ailora. Every message is one line that names what is wrong."""


class AiloraError(ValueError):
    """Bad input or a failed check; the CLI prints ``error: <message>`` and exits with status 2."""


class ExactnessError(AiloraError):
    """An initialisation, conversion or merge changed the model's outputs beyond tolerance."""
