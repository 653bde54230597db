"""Training learns: a label, loss, optimizer or step bug that leaves every
shape right would pass the rest of the suite.

- Each model family (its test-only tiny architecture, `parity.TINY`, through
  the family's own `create`) overfits one fixed batch through the project's
  real train step, loss and optimizer (`mer_jax.run.steps`, the family's paper
  recipe from `mer_jax.run.recipe`): the loss falls by a stated factor in a few
  steps, and does not when the labels are shuffled between steps.
- The session's reference run (conftest.reference_run) scores above chance
  on its validation split by a stated margin, chance computed from that
  split's labels.
- README's quoted quickstart output is what the quickstart command prints
  (slow).
"""
from __future__ import annotations

import csv
import functools
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e2e import ROOT, subprocess_env
from parity import FAMILIES, family_module
from tiny import TINY
from mer_jax.run import recipe, steps
from mer_jax.data.labels import EMOTIONS


# The family's paper recipe (loss, AdamW) for each tiny architecture.
PAPER_MODEL = {"vit": "vit_b32", "swin": "swin_b", "poolformer": "poolformer_m36"}
OVERFIT_STEPS = 20
# The loss after OVERFIT_STEPS updates is below this fraction of the first
# step's. Measured (CPU, lr 1e-2, 20 steps): vit 0.016, swin 0.007, poolformer
# 1e-4 of the start; with the labels shuffled between steps it stayed above
# 0.94 of it (tests/test_learning.py's overfit(family, shuffle_labels=True)).
OVERFIT_FACTOR = 1 / 10


def overfit(family: str, shuffle_labels: bool = False) -> list[float]:
  """The train step's loss at each of OVERFIT_STEPS + 1 steps on one batch of
  8 random gray images (labels 0..6, 0): the paper recipe of the family, from
  random init, at lr 1e-2 without augmentation (as the quickstart trains)."""
  c = recipe.get_config(PAPER_MODEL[family], "m2", "af")
  c.init.weights, c.model.img_size, c.model.drop_path_rate = "", 32, 0.0
  c.aug.enabled, c.optim.lr = False, 1e-2
  model = family_module(family).create(TINY[family][0], num_classes=7, img_size=32,
                                       in_chans=1)
  rng = np.random.RandomState(0)
  batch = {"image": rng.randint(0, 256, (8, 48, 48, 1)).astype(np.uint8),
           "label": np.array([0, 1, 2, 3, 4, 5, 6, 0], np.int32),
           "mask": np.ones(8, np.float32)}
  tx = steps.make_optimizer(c, steps_per_epoch=1)
  values = steps.run_values(c, np.bincount(batch["label"], minlength=7))
  step = jax.jit(functools.partial(steps.make_train_step(model, c, 1, is_flow=False),
                                   values=values))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))["params"]
  state = steps.fresh_state(params, tx)
  losses = []
  for _ in range(OVERFIT_STEPS + 1):  # the last step's loss is that of the 20th update
    if shuffle_labels:
      batch = dict(batch, label=rng.permutation(batch["label"]))
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  return losses


@pytest.mark.parametrize("family", FAMILIES)
def test_one_batch_is_overfit_in_a_few_steps(family):
  losses = overfit(family)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < OVERFIT_FACTOR * losses[0], losses


# --- above chance ----------------------------------------------------------------


def chance_macro_f1(labels) -> float:
  """The best macro-F1 over the present classes that a constant prediction
  gets on these labels (always the majority class, or any other): what a
  model that ignores its input scores at most."""
  from sklearn.metrics import f1_score
  present = sorted(set(labels))
  return max(f1_score(labels, [c] * len(labels), labels=present, average="macro",
                      zero_division=0) for c in present)


def test_chance_is_the_best_constant_prediction():
  # 27 "others" and 1 "sadness": always "others" -> (54/55 + 0) / 2.
  assert chance_macro_f1(["others"] * 27 + ["sadness"]) == pytest.approx(27 / 55)
  assert chance_macro_f1(["a", "b", "c", "d"]) == pytest.approx((2 / 5) / 4)


def video_labels(workdir: pathlib.Path, split: str) -> list[str]:
  with open(workdir / f"predictions_{split}.csv") as f:
    return [r["label"] for r in csv.DictReader(f)]


# --- README's quickstart ------------------------------------------------------------

# The quickstart's validation macro-F1 is above chance by at least this much
# (README quotes 0.64 against a chance of about 0.1 on its 26 videos).
QUICKSTART_MARGIN = 0.3


def readme_quickstart() -> tuple[str, list[str]]:
  """(the train command, the quoted end of its output) from README.md's
  Quickstart section, read at test time: README is where the numbers live."""
  text = (ROOT / "README.md").read_text()
  section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
  command = re.search(r"(python -m mer_jax\.train --config configs/quickstart\.py[^\n]*)",
                      section).group(1)
  quoted = re.search(r"^```\n(best epoch .*?)^```", section, re.S | re.M).group(1)
  return command, quoted.strip().splitlines()


@pytest.mark.slow
def test_readme_quotes_what_the_quickstart_prints(tmp_path):
  """README's quickstart command, run as given in a fresh directory (its
  relative data/ and runs/ paths land there; configs/ is this checkout's),
  prints the lines README quotes, paths aside; it learns (validation
  macro-F1 above chance by QUICKSTART_MARGIN)."""
  command, quoted = readme_quickstart()
  os.symlink(ROOT / "configs", tmp_path / "configs")
  argv = shlex.split(command)
  assert argv[:2] == ["python", "-m"]
  out = subprocess.run([sys.executable] + argv[1:], cwd=tmp_path,
                       env=subprocess_env(fast_compile=False), capture_output=True, text=True,
                       timeout=1800)
  assert out.returncode == 0, out.stderr[-4000:]
  printed = out.stdout.strip().splitlines()[-len(quoted):]
  assert printed == [q.replace("/path/to/", f"{tmp_path}/") for q in quoted]
  workdir = tmp_path / "runs" / "quickstart"
  m = json.loads((workdir / "metrics.json").read_text())
  labels = video_labels(workdir, "validation")
  assert set(labels) <= set(EMOTIONS) and len(labels) == m["validation"]["num_videos"]
  assert m["validation"]["macro_f1"] > chance_macro_f1(labels) + QUICKSTART_MARGIN
