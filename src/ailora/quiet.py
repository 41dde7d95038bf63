"""Log noise from other packages that must not reach ailora's users (installed on ``import ailora``:
no heavy import here)."""

from __future__ import annotations

import logging

# bitsandbytes' CPU back end warns on every import (and PEFT imports bitsandbytes whenever it is
# installed) that the optional ``kernels`` package, a Hub download of a faster 4-bit gemm, is missing.
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNEL_MESSAGE = "gemm_4bit_forward from kernels-community"


class QuietKernelWarning(logging.Filter):
    """Drop bitsandbytes' missing-``kernels`` warning: the plain CPU kernels it falls back to are correct."""

    def filter(self, record: logging.LogRecord) -> bool:
        return BNB_KERNEL_MESSAGE not in record.getMessage()


def install() -> None:
    """Put the filters in place (once: adding the same filter object again is a no-op)."""
    logging.getLogger(BNB_CPU_LOGGER).addFilter(_FILTER)


_FILTER = QuietKernelWarning()
