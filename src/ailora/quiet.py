"""Log noise from other packages that must not reach ailora's users (installed on ``import ailora``:
no heavy import here)."""

from __future__ import annotations

import logging

# logger -> the start of the message dropped:
QUIET = {
    # bitsandbytes' CPU back end warns on every import (and PEFT imports bitsandbytes whenever it is
    # installed) that the optional ``kernels`` package, a Hub download of a faster 4-bit gemm, is
    # missing; the plain CPU kernels it falls back to are correct.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    # LLM.int8 says, on every float32 forward, that it quantises its input through float16; ailora
    # reports what that costs per layer (``activation_diff``, ``ailora.core.quantize``).
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast from",
}


class DropMessage(logging.Filter):
    """Drop the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


_FILTERS = {name: DropMessage(prefix) for name, prefix in QUIET.items()}


def install() -> None:
    """Put the filters in place (once: adding the same filter object again is a no-op)."""
    for name, f in _FILTERS.items():
        logging.getLogger(name).addFilter(f)
