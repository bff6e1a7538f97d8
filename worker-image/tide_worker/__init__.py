"""Tide's reliable Redis queue worker, producer API and `tide` command line."""

__version__ = "0.1.0"
