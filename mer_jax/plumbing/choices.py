"""Enums of named choices (preprocessing method, temporal phase, ...) read from configs and flags.

A member's value is its lower-case name as users write it ("m2", "mfs"), so
that `parse` takes a config string or a member alike and an unknown name is
one ValueError listing the valid ones.
"""
from __future__ import annotations

import enum
from typing import TypeVar

from mer_jax.plumbing.errors import UsageError

C = TypeVar("C", bound="Choice")


class Choice(enum.Enum):
  """Base of the project's enums of named choices."""

  @classmethod
  def parse(cls: type[C], value: "str | C") -> C:
    """The member named `value` (any case, spaces stripped), or `value` itself if a member."""
    if isinstance(value, cls):
      return value
    try:
      return cls(str(value).strip().lower())
    except ValueError:
      raise UsageError(f"Unknown {cls.noun()} {value!r}; valid: "
                       f"{', '.join(cls.names())}") from None

  @classmethod
  def names(cls) -> tuple[str, ...]:
    """Every member's name as users write it, in definition order."""
    return tuple(m.value for m in cls)

  @classmethod
  def noun(cls) -> str:
    """What a member is called in messages (default: the class name, lower case)."""
    return cls.__name__.lower()
