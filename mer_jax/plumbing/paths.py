"""Where mer_jax keeps what it can always recompute (detections, converted weights).

One root for every cache, so a user moves or clears them all in one place:
$MER_JAX_CACHE if set, else $XDG_CACHE_HOME/mer_jax, else ~/.cache/mer_jax.
Each kind of cache is a folder below it (`cache_dir("detections")`).
"""
from __future__ import annotations

import os
import pathlib


def cache_root() -> pathlib.Path:
  """$MER_JAX_CACHE, else $XDG_CACHE_HOME/mer_jax, else ~/.cache/mer_jax."""
  env = os.environ.get("MER_JAX_CACHE")
  if env:
    return pathlib.Path(env).expanduser()
  xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
  return pathlib.Path(xdg).expanduser() / "mer_jax"


def cache_dir(kind: str) -> pathlib.Path:
  """The folder of one kind of cache, e.g. 'detections' or 'converted'."""
  return cache_root() / kind
