"""The paradox taken apart: crop x colour x size as a 2^3 factorial on test macro-F1.

M1 (frame, rgb, 384) and M2 (face, gray, 224) differ in three factors at once; the cube
of their eight corners (mer_jax.data.preprocess.Method.corner; `mer_jax.study
--factorial` trains it) measures each. Each factor is coded +1 at M1's level and -1 at
M2's (crop frame/face, colour rgb/gray, size 384/224), and the effects are the standard
2^3 contrasts on the eight cells' scores y (Montgomery's, contrast / 4):

- a main effect = mean of the 4 cells at the +1 level - mean of the 4 at -1
  ("crop" = frame - face, averaged over colour and size);
- a two-way interaction A x B = half the difference of A's effect at B = +1 and at
  B = -1 (each averaged over the third factor) = mean of the cells where the signs of A
  and B agree - mean where they differ;
- the three-way = half the difference of A x B at C = +1 and at C = -1.

With this orientation M1 - M2 = crop + colour + size + crop x colour x size (the two-way
terms cancel between two opposite corners): the paper's one difference, split.

Paired on the test videos: the eight cells are scored on the same test videos (matched
by id), and each bootstrap resample draws the videos once (within class:
mer_jax.metrics.bootstrap_macro_f1, the stratified draw of every interval here) and
scores all eight cells on it, so each effect's interval and add-one p-value come from
the effect computed on every resample; p-values are Holm-adjusted over the seven
effects. A cell's score is the mean over its seeds (independent trainings: the expected
score of one training, not an ensemble's); with several seeds each resample also draws
each cell's seeds with replacement, independently per cell (seed s of one cell shares
nothing with seed s of another), so the interval holds the training's variation too.
"""
from __future__ import annotations

import itertools

import numpy as np

from mer_jax import metrics
from mer_jax.analysis.runs import K, PHASES
from mer_jax.data.preprocess import Colour, Crop, Method

FACTORS = ("crop", "colour", "size")
HIGH = (Crop.FRAME, Colour.RGB, 384)          # M1's levels, coded +1
LOW = (Crop.FACE, Colour.GRAY, 224)           # M2's levels, coded -1
# The cube's cells in standard (Yates) order, crop changing fastest: signs [8, 3].
SIGNS = np.array([[a, b, c] for c in (-1, 1) for b in (-1, 1) for a in (-1, 1)])
CUBE = tuple(Method.corner(*(HIGH[i] if s > 0 else LOW[i] for i, s in enumerate(row)))
             for row in SIGNS)
# Each effect: the factors whose signs multiply into its contrast.
TERMS = tuple(t for n in (1, 2, 3) for t in itertools.combinations(range(3), n))
EFFECTS = tuple(" × ".join(FACTORS[i] for i in t) for t in TERMS)
CONTRASTS = np.array([np.prod(SIGNS[:, list(t)], axis=1) for t in TERMS])   # [7, 8]
LEVELS = {"crop": "frame − face", "colour": "rgb − gray", "size": "384 − 224"}
DEFINITION = ("2^3 factorial on test macro-F1, factors coded +1 at M1's level (frame, rgb, "
              "384) and -1 at M2's (face, gray, 224); effect = contrast @ cells / 4 (main: "
              "mean at +1 - mean at -1; interaction: half-difference); paired bootstrap over "
              "the same test videos (within class), cells' seeds redrawn per cell; add-one "
              "p, Holm over the seven effects")


def effects(values) -> np.ndarray:
  """[..., 7] factorial effects (EFFECTS' order) of [..., 8] cell scores in CUBE's order."""
  return np.asarray(values, np.float64) @ CONTRASTS.T / 4


def cube_cells(cells: dict, model: str, phase: str) -> list[dict] | None:
  """The eight summarised cells (mer_jax.analysis.runs.summarise_cells) of one model and
  phase in CUBE's order, or None if any is missing."""
  out = [cells.get((model, m.value, phase)) for m in CUBE]
  return None if any(c is None for c in out) else out


def cube_effects(cube: list[dict], n_resamples: int = 10000, seed: int = 0,
                 level: float = 0.95) -> dict | None:
  """Each cell's score and each effect with its paired bootstrap interval, add-one p and
  Holm-adjusted p (over the seven), from the eight cells' units on the same test videos
  (the seeds every cell has, of the first split seed they share; LOSO: folds pooled,
  subjects resampled). None when no seed is common or the cells' test videos differ."""
  common = sorted(set.intersection(*(set(c["units"]) for c in cube)))
  if not common:
    return None
  split_seed = common[0][0]
  keys = [k for k in common if k[0] == split_seed]
  units = [[c["units"][k] for k in keys] for c in cube]                 # [8][S]
  ids, y = units[0][0]["video_ids"], units[0][0]["y"]
  if any(not np.array_equal(u["video_ids"], ids) or not np.array_equal(u["y"], y)
         for row in units for u in row):
    return None
  loso = cube[0]["loso"]
  s = len(keys)
  preds = np.stack([u["pred"] for row in units for u in row])            # [8 S, n]
  f = metrics.bootstrap_macro_f1(y, preds, K, n_resamples, seed,
                                 clusters=units[0][0]["subjects"] if loso else None)
  f = f.reshape(n_resamples, 8, s)
  if s > 1:  # each cell's seeds drawn with replacement, independently per cell
    pick = np.random.default_rng((seed, 1)).integers(0, s, (n_resamples, 8, s))
    f = np.take_along_axis(f, pick, -1)
  cell_b = f.mean(-1)                                                    # [B, 8]
  point = np.array([np.mean([u["macro_f1"] for u in row]) for row in units])
  eff, eff_b = effects(point), effects(cell_b)
  p = [metrics.bootstrap_p_value(eff_b[:, j]) for j in range(len(EFFECTS))]
  rows = [{"effect": name, "estimate": float(eff[j]),
           "ci": list(metrics.percentile_interval(eff_b[:, j], level)),
           "p_value": p[j], "p_holm": h}
          for j, (name, h) in enumerate(zip(EFFECTS, metrics.holm(p)))]
  corners = [{"method": m.value, "crop": m.crop.value, "colour": m.colour.value,
              "size": m.size, "macro_f1": float(point[i]),
              "ci": list(metrics.percentile_interval(cell_b[:, i], level))}
             for i, m in enumerate(CUBE)]
  return {"cells": corners, "effects": rows, "seeds": [k[1] for k in keys],
          "split_seed": split_seed, "n_videos": int(len(ids)), "loso": loso,
          "n_resamples": int(n_resamples), "m1_minus_m2": float(point[-1] - point[0])}


def factorial(cells: dict, n_resamples: int = 10000) -> dict:
  """{(model, phase): cube_effects} for every model and phase with all eight corners, and
  the incomplete cubes ({(model, phase): missing methods}) of those with some."""
  done, incomplete = {}, {}
  for model, phase in sorted({(k[0], k[2]) for k in cells},
                             key=lambda mp: (mp[0], PHASES.index(mp[1]))):
    missing = [m.value for m in CUBE if (model, m.value, phase) not in cells]
    if not missing:
      r = cube_effects(cube_cells(cells, model, phase), n_resamples)
      if r is not None:
        done[(model, phase)] = r
    elif len(missing) < 6:  # more than M1 and M2 of the cube were run
      incomplete[(model, phase)] = missing
  return {"cubes": done, "incomplete": incomplete}


def _f(x, d=4):
  return "—" if x is None or np.isnan(x) else f"{x:.{d}f}"


def section(result: dict) -> list[str]:
  """report.md's factorial section (empty when the study holds no cube)."""
  cubes, incomplete = result["cubes"], result["incomplete"]
  if not cubes and not incomplete:
    return []
  lines = ["## Crop × colour × size: the factorial", "",
           "The eight corners of crop (frame | face) × colour (rgb | gray) × size (384 | 224) "
           "— M1 is (frame, rgb, 384), M2 (face, gray, 224) — trained with one recipe, so "
           "neighbouring cells differ in their preprocessing only (size includes the "
           "network's input side and, for ViT and Swin, the ImageNet checkpoint at that "
           "side; gray enters a one-channel stem). Effects are the standard 2^3 contrasts on "
           "test macro-F1, each factor coded +1 at M1's level: a main effect is the mean of "
           "the four cells at M1's level minus the mean of the four at M2's; a two-way "
           "interaction is half the difference of one factor's effect between the two levels "
           "of the other; the three-way likewise of a two-way. So M1 − M2 = crop + colour + "
           "size + crop × colour × size.",
           "",
           "**Paired on the test videos:** the eight cells are scored on the same test "
           "videos (matched by id); each bootstrap resample draws those videos once, within "
           "class, and scores all eight cells on it, and the effect is computed on every "
           "resample (95 % percentile interval, add-one two-sided p, Holm-adjusted over the "
           "seven effects). A cell's score is the mean over its seeds — independent "
           "trainings, so the expected score of one training, not an ensemble's; with "
           "several seeds each resample also redraws each cell's seeds, independently per "
           "cell.", ""]
  for (model, phase), missing in incomplete.items():
    lines += [f"**Incomplete cube {model} {phase.upper()}:** no finished run of "
              f"{', '.join(missing)}; no effects.", ""]
  for (model, phase), r in cubes.items():
    n = r["n_resamples"]
    seeds = r["seeds"]
    lines += [f"### {model}, {phase.upper()} ({r['n_videos']} test videos, the same in all "
              f"eight cells; seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
              + ("; one seed: the intervals hold the test set's variation only" if
                 len(seeds) == 1 else f"; each cell the mean of {len(seeds)} seeds")
              + ("; LOSO, subjects resampled" if r["loso"] else "")
              + f"; {n:,} resamples)", "",
              "| method | crop | colour | size | test macro-F1 | 95 % CI |",
              "|---|---|---|---:|---:|---|"]
    for c in r["cells"]:
      lines.append(f"| {c['method']} | {c['crop']} | {c['colour']} | {c['size']} | "
                   f"{_f(c['macro_f1'])} | [{_f(c['ci'][0])}, {_f(c['ci'][1])}] |")
    lines += ["", "| effect | contrast | estimate | 95 % CI | p | p (Holm) |",
              "|---|---|---:|---|---:|---:|"]
    for e in r["effects"]:
      contrast = LEVELS.get(e["effect"], "interaction")
      lines.append(f"| {e['effect']} | {contrast} | {_f(e['estimate'])} | "
                   f"[{_f(e['ci'][0])}, {_f(e['ci'][1])}] | "
                   f"{metrics.format_p(e['p_value'], n)} | {metrics.format_p(e['p_holm'], n)} |")
    lines += ["", f"M1 − M2 = {_f(r['m1_minus_m2'])} (= the three main effects + the "
              "three-way).", ""]
  lines += ["![Factorial cube](fig_factorial.png)", ""]
  return lines


def as_json(result: dict) -> dict:
  """study.json's `factorial`: the cubes keyed "model_phase", and the incomplete ones."""
  return {"definition": DEFINITION,
          "cubes": {f"{m}_{p}": r for (m, p), r in result["cubes"].items()},
          "incomplete": {f"{m}_{p}": v for (m, p), v in result["incomplete"].items()}}
