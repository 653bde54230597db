"""The project's user errors: bad input that the user can fix.

Every program runs through `mer_jax.plumbing.cli.run`, which prints a `UserError` as
one `error: ...` line and exits 2; any other exception (a numpy, orbax or TFDS
ValueError, ...) is a bug and keeps its traceback. A module's own user error
derives from `UserError` and from the built-in error it is (ValueError,
FileNotFoundError, ...), so callers may catch either. `disk_full` recognises a
full disk however a library wraps it (a build, a checkpoint save). This module
imports only the standard library, so that every module can import it.
"""
from __future__ import annotations

import errno


class UserError(Exception):
  """Bad input the user can fix; the message says what to do."""


class UsageError(UserError, ValueError):
  """A flag, config field or config value the program cannot take."""


class NotFound(UserError, FileNotFoundError):
  """A file or folder the user named, or that the program needs, is missing."""


NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")   # as libraries word them


def disk_full(e: BaseException | None) -> str | None:
  """'no space left on device' (or the quota's words) if `e` or its causes say
  the disk is full, else None. Libraries wrap it: orbax passes tensorstore's
  failures on as ValueError('RESOURCE_EXHAUSTED: ... No space left on device
  ...'), TFDS as a RuntimeError."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in NO_SPACE:
      return NO_SPACE[e.errno]
    for text in NO_SPACE_TEXT:
      if text in str(e):
        return text.lower()
    e = e.__cause__ or e.__context__
  return None
