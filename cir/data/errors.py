"""Faults in the user's data that a command reports in one line naming the file or key (cir.config.run_cli).

Raised in a DataLoader worker, an exception comes back to the main process
rebuilt from its text with the worker's traceback in front (PyTorch's
ExceptionWrapper); these keep only their own line, so the main process still
reports one line.
"""

from __future__ import annotations

from cir.config import InputError


def own_line(message: str, name: str) -> str:
    """`message` itself, or its last line without the `module.Name: ` prefix when a worker's traceback leads it."""
    if "Traceback (most recent call last)" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    return last.partition(f"{name}: ")[2] or last


class DataError(InputError, ValueError):
    """Data that cannot give what the config asks (e.g. shards with no usable sample); the message names the key."""

    def __init__(self, message: str) -> None:
        super().__init__(own_line(message, type(self).__name__))


class UnreadableImage(InputError, OSError):
    """An image file that does not decode (truncated, not an image) or is past PIL's decompression-bomb limit."""

    def __init__(self, message: str) -> None:
        super().__init__(own_line(message, type(self).__name__))
