"""K runs in one program (mer_jax.run.multirun): the vmapped step against the
single run's step, the grouping of cells, and whole runs against the same
runs trained alone."""
from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax import study
from mer_jax.plumbing.errors import UsageError
from mer_jax.run import multirun, recipe, steps
from e2e import study_args
from tiny import E2E_MODEL


class _Tiny(nn.Module):
  """Mean pixel -> Dense -> dropout: enough to see the RNG, the loss weights and AdamW."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(7)(jnp.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], -1))
    return nn.Dropout(0.5, deterministic=not train)(x)


def _config():
  c = recipe.get_config("poolformer_s12", "m2", "af")
  c.model.img_size = 8
  c.loss.name = "weighted_ce"   # class weights change the gradient
  return c


def _with_seed(c, seed):
  c = c.copy_and_resolve_references()
  c.seed = seed
  return c


def test_vmapped_step_is_each_runs_own_step_and_masks():
  c = _config()
  model, tx = _Tiny(), steps.make_optimizer(c, 10)
  rng = np.random.default_rng(0)
  seeds, counts = [3, 7], [np.array([5, 1, 1, 1, 1, 1, 1]), np.array([1, 1, 1, 1, 1, 1, 9])]
  states = [steps.fresh_state(model.init(jax.random.PRNGKey(s), jnp.zeros((1, 8, 8, 1)))
                              ["params"], tx) for s in seeds]
  batches = [{"image": rng.integers(0, 256, (4, 12, 12, 1), dtype=np.uint8),
              "label": rng.integers(0, 7, 4).astype(np.int32),
              "mask": np.ones(4, np.float32)} for _ in seeds]
  # The reference: each run's own single-run step (its seed and class weights as values).
  values = [steps.run_values(_with_seed(c, s), n)
            for s, n in zip(seeds, counts)]
  alone = [jax.jit(steps.make_train_step(model, c, 10, is_flow=False))(st, b, v)
           for st, b, v in zip(states, batches, values)]
  multi = jax.jit(multirun.make_multi_step(model, c, 10, is_flow=False))
  args = (multirun.stack(states), multirun.stack(batches), multirun.stack(values))
  both, m = multi(*args, jnp.array([True, True]))
  for r in range(2):
    for got, want in zip(jax.tree.leaves(multirun.unstack(both, r)),
                         jax.tree.leaves(alone[r][0])):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m["loss"][r], alone[r][1]["loss"], rtol=1e-6)
  # Run 1 masked: its whole state (step counter, parameters, moments) stays as it was.
  masked, _ = multi(*args, jnp.array([True, False]))
  for got, want in zip(jax.tree.leaves(multirun.unstack(masked, 1)), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(multirun.unstack(masked, 0)),
                       jax.tree.leaves(alone[0][0])):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_programs_group_cells_that_differ_in_seed_or_fold():
  cells = [study.Cell("poolformer_s12", me, "af", s, f)
           for me in ("m1", "m2") for s in (0, 1) for f in (0, 1, 2)]
  configs = [study.cell_config(c, ["num_epochs=2"], "loso") for c in cells]
  got = multirun.group_runs(configs, 4)
  # By hand: the 6 M1 cells (indices 0-5) in programs of 4 and 2, then M2's.
  assert got == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]]
  assert multirun.group_runs(configs, 1) == [[i] for i in range(12)]
  with pytest.raises(UsageError, match="data.method"):
    multirun.check_program([configs[0], configs[6]])
  leaky = [study.cell_config(c, ["selection=test_fold_best_epoch"], "loso") for c in cells[:2]]
  with pytest.raises(UsageError, match="runs_per_program 1"):   # no per-epoch test record
    multirun.check_program(leaky)


def test_schedule_that_depends_on_the_fold_size_is_refused():
  c = _config()
  c.num_epochs = 3
  assert multirun.shared_optimizer([c, c], [3, 2]) is not None   # constant: the same rates
  c.optim.schedule = "cosine"
  with pytest.raises(UsageError, match="different learning rates"):
    multirun.shared_optimizer([c, c], [3, 2])
  assert multirun.shared_optimizer([c, c], [3, 3]) is not None


def _cells(root):
  """{run dir relative to root: (metrics.json, predictions CSVs)}."""
  out = {}
  for m in sorted(root.glob("**/metrics.json")):
    d = m.parent
    out[str(d.relative_to(root))] = (json.loads(m.read_text()),
                                     {p.name: p.read_text() for p in d.glob("predictions_*.csv")})
  return out


@pytest.mark.slow
@pytest.mark.parametrize("protocol,runs", [("loso", ["--folds", "0,2"])])
def test_runs_in_one_program_equal_the_runs_alone(casme2_small, tmp_path, protocol, runs):
  """K=2 LOSO folds of uneven size (batch 4: 3 and 2 steps an epoch; their seeds' own
  data order and dropout), through `study --runs_per_program 2` vs the study's one-by-one
  runs. (K runs of other seeds: test_vmapped_step_is_each_runs_own_step_and_masks.)"""
  args = ["--models", E2E_MODEL, "--methods", "m2", "--phases", "af", "--protocol",
          protocol, *runs] + study_args(casme2_small) + ["--set", "batch_size=4"]
  assert study.main(["--workdir", str(tmp_path / "alone"), *args]) == 0
  assert study.main(["--workdir", str(tmp_path / "multi"), "--runs_per_program", "2",
                     *args]) == 0
  alone, multi = _cells(tmp_path / "alone"), _cells(tmp_path / "multi")
  assert sorted(alone) == sorted(multi) and len(alone) == 2
  for d in alone:
    (a, a_pred), (m, m_pred) = alone[d], multi[d]
    assert (tmp_path / "multi" / d / "report.md").exists()
    assert a_pred == m_pred                                  # every video's prediction
    assert a["best_epoch"] == m["best_epoch"] and a["epochs_run"] == m["epochs_run"]
    for split in ("validation", "test"):
      assert a[split]["macro_f1"] == m[split]["macro_f1"]
      assert a[split]["confusion"] == m[split]["confusion"]
    # The batched program may round differently (LOSO: per-run class weights are an
    # argument, not a constant): the epoch losses agree to float32 rounding.
    np.testing.assert_allclose([h["train_loss"] for h in m["history"]],
                               [h["train_loss"] for h in a["history"]], rtol=1e-5)
    assert [h["val_macro_f1"] for h in m["history"]] == \
        [h["val_macro_f1"] for h in a["history"]]
