"""Tide's reliable Redis queue worker, producer API and `tide` command line."""

from tide_worker.envelope import Message
from tide_worker.errors import Reject, RetryAfter

__version__ = "0.1.0"

__all__ = ["Message", "Reject", "RetryAfter", "__version__"]
