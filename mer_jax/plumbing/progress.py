"""A progress bar that counts steps completed, not steps dispatched.

jax dispatches steps asynchronously: a bar advanced at dispatch shows tens of
steps per second, then stalls where the host waits. `StepProgress` keeps the
outputs of the last few steps and blocks on the one `lag` steps back before it
counts it, so the bar (and its rate) follows the device with at most `lag`
steps of queue ahead of it.
"""
from __future__ import annotations

import collections
import sys

import jax


class StepProgress:
  """`dispatched(out)` after each step; `finish()` at the epoch's end, `close()` if it
  ends in an exception."""

  def __init__(self, total: int, initial: int = 0, desc: str = "", *, lag: int = 2,
               enabled: bool = True):
    self.lag = lag
    self.completed = initial
    self._pending = collections.deque()
    self._bar = None
    if enabled:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False,
                       dynamic_ncols=True, file=sys.stderr)

  def dispatched(self, step_output) -> None:
    """Records a dispatched step's output; counts the steps now surely done."""
    self._pending.append(step_output)
    while len(self._pending) > self.lag:
      self._complete(self._pending.popleft())

  def finish(self) -> None:
    while self._pending:
      self._complete(self._pending.popleft())
    self.close()

  def close(self) -> None:
    """Takes the bar off the terminal without waiting for pending steps (an epoch
    that ends in an exception), so an `error:` line starts on a line of its own."""
    if self._bar is not None:
      self._bar.close()

  def set_postfix(self, **kwargs) -> None:
    if self._bar is not None:
      self._bar.set_postfix(**kwargs)

  def _complete(self, out) -> None:
    jax.block_until_ready(out)
    self.completed += 1
    if self._bar is not None:
      self._bar.update(1)
