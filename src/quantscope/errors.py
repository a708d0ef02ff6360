"""The one exception type that means "the user asked for something we cannot do".

Every part raises :class:`UserError` with one sentence that says what is wrong and what to do;
the command line prints that sentence and exits non-zero, never a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an impossible request, explained in one sentence.

    >>> str(UserError("No such file 'x.txt'; pass an existing text file with --text."))
    "No such file 'x.txt'; pass an existing text file with --text."
    """


class ConfigUnavailable(UserError):
    """A quantization config this machine cannot run (missing library or hardware)."""
