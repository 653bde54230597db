"""orbax checkpoints of a run: the latest few, and the best by validation macro-F1.

Each checkpoint holds the train state (params, optimizer state, step) and a
JSON `meta` with everything else a resumed run needs: epoch and position in
the epoch, early-stopping state, the metric history. The step RNG is derived
from the config seed and the step, so it needs no saving.

Layout: `WORKDIR/checkpoints/latest/<step>/` and `WORKDIR/checkpoints/best/<step>/`.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


def _manager(path: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  # The two managers save the same step at once: distinct barrier names, or
  # their multi-process commit barriers collide ("already ongoing").
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          barrier_sync_key_prefix=path.name))
  return ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))


class Checkpoints:
  """The latest `keep` checkpoints and the single best one of a run."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
    root = pathlib.Path(workdir).absolute() / "checkpoints"
    self.latest = _manager(root / "latest", keep)
    self.best = _manager(root / "best", 1)

  def save(self, step: int, state: Any, meta: dict, *, best: bool = False):
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta))
    self.latest.save(step, args=args, force=True)
    if best:
      self.best.save(step, args=args, force=True)

  @staticmethod
  def _restore(mngr, abstract_state, step=None):
    step = mngr.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def restore_latest(self, abstract_state):
    """(state, meta) of the newest checkpoint, or None for a fresh run."""
    return self._restore(self.latest, abstract_state)

  def restore_best(self, abstract_state):
    return self._restore(self.best, abstract_state)

  def latest_meta(self) -> dict | None:
    step = self.latest.latest_step()
    if step is None:
      return None
    return dict(self.latest.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"])

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()
