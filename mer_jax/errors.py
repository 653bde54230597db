"""The project's user errors: bad input that the user can fix.

Every program runs through `mer_jax.cli.run`, which prints a `UserError` as
one `error: ...` line and exits 2; any other exception (a numpy, orbax or TFDS
ValueError, ...) is a bug and keeps its traceback. A module's own user error
derives from `UserError` and from the built-in error it is (ValueError,
FileNotFoundError, ...), so callers may catch either. This module imports
nothing, so that every module can import it.
"""
from __future__ import annotations


class UserError(Exception):
  """Bad input the user can fix; the message says what to do."""


class UsageError(UserError, ValueError):
  """A flag, config field or config value the program cannot take."""


class NotFound(UserError, FileNotFoundError):
  """A file or folder the user named, or that the program needs, is missing."""
