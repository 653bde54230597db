"""mer_jax.plumbing.timing against hand computation: a fake clock's durations and their statistics,
the pipelined count of calls, XLA's flop count of a matmul and the table format."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mer_jax.plumbing import timing


class FakeClock:
  """Advances by the next of `steps` seconds at each call made inside a timed call."""

  def __init__(self, steps):
    self.now, self.steps, self.calls = 0.0, list(steps), 0

  def __call__(self):
    return self.now

  def work(self):
    self.calls += 1
    self.now += self.steps.pop(0)


def test_durations_skip_the_warmup_and_time_each_call():
  clock = FakeClock([100.0, 3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0])
  times = timing.durations(clock.work, 10, warmup=1, clock=clock)
  assert clock.calls == 11
  assert times == [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0]
  s = timing.summary(times)
  # Sorted: 1 1 2 3 3 4 5 5 6 9. Median: (3 + 4) / 2. p90: rank 0.9 * 9 = 8.1 -> 6 + 0.1 * (9 - 6).
  assert s["best"] == 1.0
  assert s["median"] == pytest.approx(3.5)
  assert s["p90"] == pytest.approx(6.3)


def test_pipelined_seconds_sizes_the_run_from_one_call():
  blocked = []
  clock = FakeClock([50.0] + [0.1] * 100)  # the warm-up compiles, then 0.1 s calls
  per_call = timing.pipelined_seconds(clock.work, blocked.append, warmup=1, iters=20,
                                      case_seconds=0.45, clock=clock)
  # One sizing call of 0.1 s -> ceil(0.45 / 0.1) = 5 timed calls, only the last waited for.
  assert clock.calls == 1 + 1 + 5
  assert len(blocked) == 3
  assert per_call == pytest.approx(0.1)
  clock = FakeClock([0.1] * 100)
  timing.pipelined_seconds(clock.work, blocked.append, warmup=1, iters=3, case_seconds=60,
                           clock=clock)
  assert clock.calls == 1 + 1 + 3   # capped at iters


def test_xla_flops_of_a_matmul_is_2mnk():
  m, k, n = 16, 24, 40
  compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
  assert timing.xla_flops(compiled) == 2 * m * n * k


def test_xla_flops_is_none_without_a_cost_analysis():
  class NoCost:
    def cost_analysis(self):
      raise NotImplementedError
  assert timing.xla_flops(NoCost()) is None


def test_peak_rss_counts_a_large_allocation_until_reset():
  timing.reset_peak_rss()
  before = timing.peak_rss_gb()
  block = bytearray(300 * 2 ** 20)
  block[::4096] = b"x" * len(block[::4096])  # touch every page
  peak = timing.peak_rss_gb()
  assert peak - before > 0.25   # 300 MiB = 0.31 GB
  del block
  timing.reset_peak_rss()
  assert peak - timing.peak_rss_gb() > 0.25


def test_markdown_table_aligns_numbers_right():
  md = timing.markdown_table(["model", "input", "img/s"], [["vit", "M1", "12.5"],
                                                           ["swin", "M2", "3.0"]], right_from=2)
  assert md.splitlines() == ["| model | input | img/s |", "|---|---|---:|",
                             "| vit | M1 | 12.5 |", "| swin | M2 | 3.0 |"]
  assert timing.markdown_table(["a", "b"], []).splitlines()[1] == "|---|---|"
