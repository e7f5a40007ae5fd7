"""Error types for input a user can fix, shared by every layer (this module imports nothing of the package).

Each message names what is wrong and what to do about it. The ``scaling`` command prints any ``UserError``
as one ``error:`` line and exits with the error's ``exit_status``; anything else is a bug and keeps its
traceback. ``warn`` prints the one ``warning:`` line of a problem that was worked around.
"""

import sys


class UserError(Exception):
    """Bad input or state that the user can fix; the message says how."""

    exit_status = 2


class ConfigError(UserError, ValueError):
    """A configuration value or command-line argument that cannot work; names the field and the fix."""


class DataError(UserError):
    """A data set or data folder that is missing or cannot be read; says how to provide it."""


def warn(message: str) -> None:
    """One ``warning:`` line on stderr: something was wrong, the run went on, and this says what was done."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
