"""The input thread of an epoch (input_pipeline.Prefetcher) ends with the
epoch, however the epoch ends: nothing keeps the training split alive."""
from __future__ import annotations

import contextlib
import threading
import weakref

import pytest

from e2e import ROOT, train_overrides
from mer_jax.plumbing import cli
from mer_jax.run import loop
from mer_jax.run.input_pipeline import Prefetcher


def prefetch_threads() -> list[threading.Thread]:
  return [t for t in threading.enumerate() if t.name == "mer_jax-prefetch" and t.is_alive()]


class Batch:
  def __init__(self, i: int):
    self.i = i


def source(n: int, log: list, made: list, fail_at: int | None = None):
  """Batches 0..n-1 (raising at `fail_at`); logs its own closing and keeps a
  weak reference to each batch it made."""
  try:
    for i in range(n):
      if i == fail_at:
        raise OSError("a read failed")
      b = Batch(i)
      made.append(weakref.ref(b))
      yield b
  finally:
    log.append("closed")


@pytest.mark.parametrize("how", ["consumer raises", "consumer breaks", "source raises",
                                 "runs to the end"])
def test_the_thread_stops_and_the_source_is_closed(how):
  log, made, seen = [], [], []
  raised = {"consumer raises": FloatingPointError, "source raises": OSError}.get(how)
  # Held here as run/loop.py holds its epoch's batch generator.
  src = source(50, log, made, fail_at=5 if how == "source raises" else None)
  with pytest.raises(raised) if raised else contextlib.nullcontext():
    with Prefetcher(src, put=lambda b: b, size=2) as feed:
      for b in feed:
        seen.append(b.i)
        if b.i == 3 and how == "consumer raises":
          raise FloatingPointError("the loss became NaN")
        if b.i == 3 and how == "consumer breaks":
          break
  b = None  # the consumer's own reference to the last batch
  assert not prefetch_threads()
  assert log == ["closed"]
  assert seen == (list(range(50)) if how == "runs to the end" else
                  list(range(5)) if how == "source raises" else list(range(4)))
  assert made and all(r() is None for r in made)  # no batch is kept alive


def test_a_nan_mid_epoch_leaves_no_input_thread(casme2_small, tmp_path):
  """The trainer's own loop: a NaN loss found mid-epoch (at a log step) ends
  the run, its progress bar and its input thread, which would otherwise block on a full queue
  holding the training split for the rest of the process (a tuner's trials)."""
  config = cli.load_config(str(ROOT / "configs/quickstart.py"), [
      o[len("--config."):] for o in train_overrides(
          casme2_small, **{"optim.lr": 1e12, "num_epochs": 1, "data.prefetch": 1})])
  from tqdm import tqdm
  before, bars = set(prefetch_threads()), set(getattr(tqdm, "_instances", ()))
  with pytest.raises(loop.NonFiniteLossError) as raised:
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert set(prefetch_threads()) <= before
  # Nor an open progress bar while the exception (and so the run's frames) is still
  # alive, as when cli.run prints it: the `error:` line would follow the bar.
  assert raised.traceback and set(getattr(tqdm, "_instances", ())) <= bars
