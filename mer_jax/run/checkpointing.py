"""orbax checkpoints of a run: the latest few, and the best by validation macro-F1.

Each checkpoint holds the train state (params, optimizer state, step) and a
JSON `meta` with everything else a resumed run needs: epoch and position in
the epoch, early-stopping state, the metric history, and a checksum of the
state. The step RNG is derived from the config seed and the step, so it
needs no saving.

Layout: `WORKDIR/checkpoints/latest/<step>/` and `WORKDIR/checkpoints/best/<step>/`.

Faults end in one line that says what to do (`CheckpointError`): a disk that
fills during a save names the checkpoint and the step a rerun resumes from; a
checkpoint that cannot be read, or whose state no longer matches its
checksum (orbax stores incompressible arrays without one, so flipped bytes
read back silently), is skipped for the newest intact one, and the run says
which it used.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mer_jax.plumbing.errors import NO_SPACE_TEXT, UserError, disk_full

CHECKSUM = "checksum"   # the meta field holding state_checksum(state)

# An epoch's end saves a checkpoint when the last save is at least this old, and the run's
# last epoch always does: a short run (a LOSO fold of a small model: seconds an epoch) does
# not write its whole state every few seconds (orbax, the checksum: ~15 % of such a fold's
# CPU), and a run killed between saves resumes from the last one and retrains to the same
# result. An improved epoch not saved at once is kept in memory and saved as the best, at its
# own step, with the next save, so the best on disk always matches the saved early stopping.
SAVE_EVERY_SECONDS = 60.0


class CheckpointError(UserError):
  """A checkpoint that cannot be written (disk full) or read (every one corrupt):
  a UserError, so that every program prints it as one `error:` line."""


class CorruptCheckpoint(Exception):
  """A checkpoint's state does not match the checksum saved with it."""


def state_checksum(state) -> int:
  """The sum of the state's bits as uint32 words, modulo 2**32.

  Integer addition is exact and order-free, so the same state gives the same
  number on any device count or platform; one changed word changes it.
  """
  return int(_checksum(state))


@jax.jit
def _checksum(state):
  total = jnp.zeros((), jnp.uint32)
  for leaf in jax.tree.leaves(state):
    leaf = jnp.asarray(leaf)
    size = leaf.dtype.itemsize
    if leaf.dtype == jnp.bool_:
      words = leaf.astype(jnp.uint32)
    elif size >= 4:   # 8-byte types become pairs of words
      words = jax.lax.bitcast_convert_type(leaf, jnp.uint32)
    else:
      words = jax.lax.bitcast_convert_type(leaf, jnp.dtype(f"uint{8 * size}")).astype(jnp.uint32)
    total = total + jnp.sum(words, dtype=jnp.uint32)
  return total


# --- disk full ---------------------------------------------------------------------

_ORBAX_DIR = os.path.dirname(ocp.__file__)


class _QuietDiskFull(logging.Filter):
  """Drops orbax's own log records (with tracebacks, from its save threads)
  of a disk-full save: Checkpoints raises the one line that says what to do."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not record.pathname.startswith(_ORBAX_DIR):
      return True
    cause = record.exc_info[1] if record.exc_info else None
    return not (disk_full(cause) or any(t in record.getMessage() for t in NO_SPACE_TEXT))


_QUIET = _QuietDiskFull()


def _quiet_closed_loop(unraisable):
  """Drops the 'Event loop is closed' that TensorStore's write callbacks
  raise into orbax's finished event loop after a failed save (noise printed
  as a traceback); any other unraisable exception is printed as usual."""
  e = unraisable.exc_value
  if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
    sys.__unraisablehook__(unraisable)


def _mount_point(path: pathlib.Path) -> pathlib.Path:
  path = path.absolute()
  while not os.path.ismount(path) and path != path.parent:
    path = path.parent
  return path


def _size_mb(path: pathlib.Path) -> float:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# --- the run's checkpoints ------------------------------------------------------------


def _manager(path: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  # The two managers save the same step at once: distinct barrier names, or
  # their multi-process commit barriers collide ("already ongoing").
  processes = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=path.name)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, cleanup_tmp_directories=True,
      multiprocessing_options=processes)
  # Uncompressed: trained float32 weights and Adam moments shrink by ~8 % under zstd, for
  # ~30 % of a save's CPU (BENCHMARKS "Study scale"); compressed checkpoints of earlier
  # versions read back as before (the codec is in each array's metadata).
  handlers = {"state": ocp.PyTreeCheckpointHandler(use_compression=False,
                                                   multiprocessing_options=processes),
              "meta": ocp.JsonCheckpointHandler(multiprocessing_options=processes)}
  return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


@dataclasses.dataclass
class Restored:
  """A checkpoint read back: its state and meta, where it came from, and the
  newer (or, for the best, preferred) checkpoints skipped as corrupt."""
  state: Any
  meta: dict
  kind: str                    # "best" or "latest": the model it is
  step: int
  corrupt: list[str] = dataclasses.field(default_factory=list)

  def record(self) -> dict:
    """metrics.json's `evaluated_checkpoint`."""
    return {"kind": self.kind, "step": self.step, "corrupt": self.corrupt}


class Checkpoints:
  """The latest `keep` checkpoints and the single best one of a run."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
    self.root = pathlib.Path(workdir).absolute() / "checkpoints"
    self.latest = _manager(self.root / "latest", keep)
    self.best = _manager(self.root / "best", 1)
    self._best_from_latest = None   # a step saved as both: the best is copied once written
    logging.getLogger("absl").addFilter(_QUIET)   # once: filters are a set
    if sys.unraisablehook is sys.__unraisablehook__:   # not a test runner's own
      sys.unraisablehook = _quiet_closed_loop

  # --- saving ---

  def save(self, step: int, state: Any, meta: dict, *, latest: bool = True,
           best: bool = False):
    """Saves asynchronously among the latest and/or as the best; a failed earlier save
    surfaces here or in wait()."""
    self._copy_best()   # before this save can rotate its source out of the latest
    meta = {**meta, CHECKSUM: state_checksum(state)}
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta))
    if latest:
      self._guard(self.latest, lambda: self.latest.save(step, args=args, force=True))
    if best and latest and jax.process_count() == 1:
      # One write, then a file copy (a run's last epoch is often its best): a second orbax
      # save of the same state costs far more CPU, which the study's next run would lose.
      self._best_from_latest = step
    elif best:
      self._guard(self.best, lambda: self.best.save(step, args=args, force=True))

  def wait(self):
    self._guard(self.latest, self.latest.wait_until_finished)
    self._copy_best()
    self._guard(self.best, self.best.wait_until_finished)

  def close(self):
    try:
      self._copy_best()
    finally:
      self._guard(self.latest, self.latest.close)
      self._guard(self.best, self.best.close)

  def _copy_best(self):
    """Makes the best a copy (its own files: a corrupt one still has its twin) of the
    latest checkpoint saved as both, once orbax has committed it; drops the older best."""
    step, self._best_from_latest = self._best_from_latest, None
    if step is None:
      return
    self._guard(self.latest, self.latest.wait_until_finished)
    source = pathlib.Path(self.latest.directory) / str(step)
    target = pathlib.Path(self.best.directory) / str(step)
    partial = target.with_name(f"{step}.orbax-checkpoint-tmp-copy")  # orbax clears leftovers

    def copy():
      for old in (partial, target):
        shutil.rmtree(old, ignore_errors=True)
      shutil.copytree(source, partial)
      os.replace(partial, target)
    self._guard(self.best, copy)
    self.best.reload()
    for other in self.best.all_steps():
      if other != step:
        self.best.delete(other)

  def _guard(self, mngr: ocp.CheckpointManager, call: Callable[[], Any]):
    """`call()`, with a full disk turned into CheckpointError."""
    try:
      return call()
    except Exception as e:  # noqa: BLE001 - only a full disk is translated
      words = disk_full(e)
      if words is None:
        raise
      raise self._disk_full_error(mngr, words, str(e)) from None

  def _disk_full_error(self, mngr, words: str, text: str) -> CheckpointError:
    for other in (self.latest, self.best):   # let the other save end before looking
      try:
        other.wait_until_finished()
      except Exception as e:  # noqa: BLE001
        if disk_full(e) is None:
          raise
    directory = pathlib.Path(mngr.directory)
    failed = re.search(re.escape(str(directory)) + r"/(\d+)\.orbax-checkpoint-tmp", text)
    path = directory / failed.group(1) if failed else directory
    self.latest.reload()
    last = self.latest.latest_step()
    size = f" (a checkpoint takes {_size_mb(self.root / 'latest' / str(last)):.0f} MB)" \
        if last is not None else ""
    resumes = f"it resumes from step {last}, the last complete checkpoint" \
        if last is not None else "no checkpoint is complete yet: it starts afresh"
    return CheckpointError(
        f"{words} while saving a checkpoint to {path}: free space under "
        f"{_mount_point(directory)}{size} and rerun the same command ({resumes})")

  # --- restoring ---

  def restore_latest(self, abstract_state, *, say=print, discard: bool = False
                     ) -> Restored | None:
    """The newest intact checkpoint, latest or best (None: nothing saved yet).

    Corrupt newer ones are skipped, said in one line; `discard` deletes
    them, as a resumed run must (it will save those steps again). Every
    process calls it (orbax deletes behind a barrier).
    """
    candidates = [(s, "latest", self.latest) for s in self.latest.all_steps()] + \
                 [(s, "best", self.best) for s in self.best.all_steps()]
    candidates.sort(key=lambda c: (c[0], c[1] == "latest"), reverse=True)
    return self._first_intact(candidates, abstract_state, say, wanted="latest",
                              discard=discard)

  def restore_best(self, abstract_state, *, say=print) -> Restored | None:
    """The best checkpoint; if it is corrupt, its copy among the latest (the
    same step), else the newest intact checkpoint, said so and recorded in
    `Restored.corrupt`. None when the run saved none."""
    candidates = [(s, "best", self.best) for s in self.best.all_steps()]
    for s, _, _ in list(candidates):
      if s in self.latest.all_steps():
        candidates.append((s, "best", self.latest))   # saved with the best: the same model
    candidates += [(s, "latest", self.latest) for s in self.latest.all_steps()[::-1]]
    return self._first_intact(candidates, abstract_state, say, wanted="best")

  def _first_intact(self, candidates, abstract_state, say, *, wanted: str,
                    discard: bool = False) -> Restored | None:
    skipped, first_error, tried = [], None, set()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    for step, kind, mngr in candidates:
      if (step, id(mngr)) in tried:
        continue
      tried.add((step, id(mngr)))
      path = pathlib.Path(mngr.directory) / str(step)
      try:
        state, meta = self._read(mngr, step, abstract)
      except Exception as e:  # noqa: BLE001 - judged below: corrupt, or a bug
        first_error = first_error or e
        skipped.append((str(path), _reason(e)))
        if discard:
          mngr.delete(step)
        continue
      if skipped:
        paths, reasons = ", ".join(p for p, _ in skipped), "; ".join(r for _, r in skipped)
        what = f"checkpoint {paths} is" if len(skipped) == 1 else f"checkpoints {paths} are"
        instead = ", the newest intact checkpoint, not the one selected on validation" \
            if wanted == "best" and kind == "latest" else ""
        say(f"{what} corrupt ({reasons}){'; deleted' if discard else ''}: "
            f"using {path} (step {step}) instead{instead}")
      return Restored(state, meta, kind, step, [p for p, _ in skipped])
    if first_error is None:
      return None
    if not _looks_corrupt(first_error):
      raise first_error          # unreadable for another reason: a bug to see
    raise CheckpointError(
        f"every checkpoint under {self.root} is corrupt ({_reason(first_error)}): "
        "delete that folder and rerun the training command to train afresh")

  @staticmethod
  def _read(mngr, step: int, abstract) -> tuple[Any, dict]:
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
        meta=ocp.args.JsonRestore()))
    state, meta = out["state"], dict(out["meta"])
    saved = meta.pop(CHECKSUM, None)
    if saved is not None and state_checksum(state) != saved:
      raise CorruptCheckpoint("its state does not match the checksum saved with it")
    return state, meta

  def latest_meta(self) -> dict | None:
    """The meta of the newest checkpoint whose meta reads (None: none saved)."""
    for step in self.latest.all_steps()[::-1]:
      try:
        meta = dict(self.latest.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"])
      except (ValueError, KeyError, OSError):   # json.JSONDecodeError is a ValueError
        continue
      meta.pop(CHECKSUM, None)
      return meta
    return None


def _reason(e: BaseException) -> str:
  if isinstance(e, CorruptCheckpoint):
    return str(e)
  first = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return f"{type(e).__name__}: {first[:120]}{'...' if len(first) > 120 else ''}"


def _looks_corrupt(e: BaseException) -> bool:
  """Damage to the files rather than a mismatch between code and checkpoint:
  a checksum, JSON or TensorStore read failure, or a missing file or item."""
  text = str(e)
  return isinstance(e, (CorruptCheckpoint, json.JSONDecodeError, FileNotFoundError)) or any(
      t in text for t in ("Encountered error while reading", "DATA_LOSS", "corrupt",
                          "was not found in the checkpoint", "NOT_FOUND"))
