"""One compiled program per process (mer_jax.run.programs): runs that differ in
seed, class weights and learning rate share the jitted step without tracing it
again and get what a freshly compiled step gives them; the scanned epoch
gives the per-step loop's parameters and predictions."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from mer_jax.plumbing import runtime
from mer_jax.run import input_pipeline, programs, recipe, steps
from tiny import E2E_MODEL

N, BATCH, SIDE = 40, 8, 40   # 5 steps an epoch


@pytest.fixture(scope="module")
def setup():
  c = recipe.get_config(E2E_MODEL, "m2", "af")
  c.init.weights, c.model.img_size, c.batch_size, c.scan_steps = "", 32, BATCH, 4
  rng = np.random.RandomState(0)
  data = input_pipeline.SplitData(
      images=rng.randint(0, 256, (N, SIDE, SIDE, 1)).astype(np.uint8),
      labels=rng.randint(0, 7, N).astype(np.int32), video_ids=np.arange(N).astype(str),
      subjects=np.zeros(N).astype(str), frame_index=np.zeros(N, np.int32),
      datasets=np.full(N, "casme2"))
  mesh = runtime.make_mesh()
  spe = input_pipeline.steps_per_epoch(N, BATCH)
  return c, data, mesh, spe, programs.get(c, 1, spe, mesh)


def _fresh(c, prog, spe):
  return steps.fresh_state(prog.init(np.int32(c.seed)), steps.make_optimizer(c, spe))


def _per_step(step, c, data, spe, values, prog):
  state = _fresh(c, prog, spe)
  for batch in input_pipeline.train_batches(data, BATCH, seed=c.seed, epoch=0):
    state, _ = step(state, batch, values)
  return state


def test_runs_of_other_values_share_the_step_and_match_a_fresh_compile(setup):
  c, data, mesh, spe, prog = setup
  a = c.copy_and_resolve_references()
  b = c.copy_and_resolve_references()
  b.seed, b.optim.lr, b.optim.weight_decay = 1, 3e-4, 0.05
  assert programs.get(b, 1, spe, mesh) is prog   # the same key: the same program
  _per_step(prog.train_step, a, data, spe, steps.run_values(a, [9, 1, 5, 5, 5, 5, 10]), prog)
  traces = dict(programs.TRACES)
  values_b = steps.run_values(b, [1, 20, 3, 3, 3, 3, 7])
  shared = _per_step(prog.train_step, b, data, spe, values_b, prog)
  assert dict(programs.TRACES) == traces   # run b neither traced nor compiled anything
  # Run b's own step, compiled afresh with nothing of run a (a new jit, as in a new process).
  own = jax.jit(steps.make_train_step(prog.model, b, spe, is_flow=False))
  alone = _per_step(own, b, data, spe, values_b, prog)
  for x, y in zip(jax.tree.leaves(shared), jax.tree.leaves(alone)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_the_scanned_epoch_gives_the_per_step_parameters_and_predictions(setup):
  c, data, mesh, spe, prog = setup
  values = steps.run_values(c, np.bincount(data.labels, minlength=7))
  by_step = _per_step(prog.train_step, c, data, spe, values, prog)
  state, images, labels = _fresh(c, prog, spe), *programs.device_split(data.images,
                                                                        data.labels, mesh)
  assert images.shape[0] == 64   # padded to a power of two
  order = input_pipeline.epoch_indices(data, BATCH, seed=c.seed, epoch=0)
  acc = programs.start_acc(0.0)
  for i in range(0, spe, c.scan_steps):   # 4 steps, then 1 of 4 (3 skipped)
    rows = np.zeros((c.scan_steps, BATCH), np.int32)
    rows[:len(order[i:i + c.scan_steps])] = order[i:i + c.scan_steps]
    state, acc = prog.train_chunk(state, images, labels, rows,
                                  np.int32(min(c.scan_steps, spe - i)), values, acc)
  assert int(state["step"]) == int(by_step["step"]) == spe
  for x, y in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(by_step["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
  probs = [np.asarray(prog.predict(s["params"], data.images[:16])) for s in (state, by_step)]
  np.testing.assert_allclose(*probs, atol=1e-5)
  assert bool(acc["finite"]) and np.isfinite(float(acc["loss_sum"]))
