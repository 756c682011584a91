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


class TaskError(Exception):
    """A task failed while running (a job of a launch, say): the input was fine, the run was not.

    The CLI prints the message on one line and exits with status 1; nothing half-written is
    left where the next stage would take it for a result.
    """


class AttrcliWarning(UserWarning):
    """Something attrcli recovered from and the user should know about (a corrupt checkpoint
    chunk discarded, ...). The CLI prints each on one line."""
