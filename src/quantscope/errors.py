"""The exception types that mean "the user asked for something we cannot do".

Every part raises :class:`UserError` with one sentence that says what is wrong and what to do;
the command line prints that sentence and exits non-zero, never a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an impossible request, explained in one sentence.

    >>> str(UserError("No such file 'x.txt'; pass an existing text file with --text."))
    "No such file 'x.txt'; pass an existing text file with --text."
    """


class Unavailable(UserError):
    """A config this machine cannot run (a missing library or hardware): the one way a backend
    says so. A run shows it as skipped with ``reason``; elsewhere it is a user error.

    >>> str(Unavailable("bnb-nf4", "bitsandbytes is not installed."))
    'bnb-nf4 cannot run here: bitsandbytes is not installed.'
    """

    def __init__(self, config: str, reason: str) -> None:
        super().__init__(f"{config} cannot run here: {reason}")
        self.config = config
        self.reason = reason


class ToolError(RuntimeError):
    """A tool quantscope drives in its own environment failed (a job's exit, a server that
    died): that config fails with this sentence, the run goes on."""
