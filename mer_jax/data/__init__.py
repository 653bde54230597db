"""Micro-expression datasets as `Video` records; phases, splits, preprocessing, stand-ins.

  load_videos(name, root) -> [Video]   name in DATASETS: casme2, samm, smic_hs, casme3
  load(name, root, **options) -> VideoSet (the videos, the sheet read, the quirks met)

Each dataset's module (mer_jax.data.<name>) handles its copy's quirks once;
the options are its loader's (`sheet=` for the sheet-coded sets, `apex=` for
SMIC-HS). Loaders are imported on first use, so importing the package stays cheap.
"""
from __future__ import annotations

import importlib
import pathlib

from mer_jax.plumbing.errors import UsageError

DATASETS = ("casme2", "samm", "smic_hs", "casme3")


def load(name: str, root: str | pathlib.Path, **options):
  """The dataset `name` read from `root`: a mer_jax.data.videos.VideoSet."""
  if name not in DATASETS:
    raise UsageError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
  module = importlib.import_module(f"mer_jax.data.{name}")
  return getattr(module, f"load_{name}")(root, **options)


def load_videos(name: str, root: str | pathlib.Path, **options) -> list:
  """The `Video` records of dataset `name` read from `root`, in the reader's order."""
  return load(name, root, **options).videos
