"""Errors the command line turns into exit codes."""

from __future__ import annotations


class UserError(Exception):
    """Bad usage or bad input.

    The CLI prints the message on one line and exits with status 2. The message names what is
    wrong and, where there is a finite choice, what is valid. Raise it before anything is
    written to disk.
    """


class LockedError(UserError):
    """Another process holds the lock of an artifact."""
