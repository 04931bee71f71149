"""The one root of the errors the package raises for a reason the user can fix.

Each stage defines its own kinds beneath these two (RunError, BuildError, CheckpointError, ...); the CLI
maps them to exit codes in one place: `UsageError` (an option or input the caller must change) exits 2,
any other `FlexiditError` (the work itself failed: a missing file, a damaged engine) exits 1. Both are
printed as their one-line message, never as a traceback.
"""

from __future__ import annotations


class FlexiditError(Exception):
    """A failure the message explains in one line, with what to do about it."""


class UsageError(FlexiditError):
    """Bad usage: an option value, or options that contradict each other, the model or the checkpoint."""
