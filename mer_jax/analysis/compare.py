"""Choosing and comparing cells: every "best" is chosen on VALIDATION, and methods are
compared paired on the same test videos.

- every "best" (Table III, Table V, Fig. 2, Fig. 4, the M1 − M2 column) is the
  model with the highest validation macro-F1 (the best checkpoint's, from the
  run's metrics.json; averaged over seeds, split seeds and LOSO folds); ties go
  to the first in name order;
- the headline M1 − M2 is paired: one model per phase (the highest mean
  validation macro-F1 over M1 and M2), both methods on the same test videos;
  p-values are add-one (never 0) with Holm-adjusted ones beside them.
"""
from __future__ import annotations

import itertools

import numpy as np

from mer_jax import metrics
from mer_jax.analysis.runs import K, METHODS, PHASES
from mer_jax.models import temporal
from mer_jax.plumbing.errors import UserError

PAIRED_RESAMPLES = 10000
CHOICE = ("**How the best model is chosen:** for each method and phase, the model with the "
          "highest validation macro-F1 (its best checkpoint on the validation videos, averaged "
          "over seeds, split seeds and LOSO folds); ties go to the model whose name sorts "
          "first. Its test macro-F1 is shown beside it and played no part in the choice.")


# --- choosing ------------------------------------------------------------------


def best_key(cells: dict, keys, score: str = "val_f1"):
  """The key of `keys` whose cell has the highest `score` ("val_f1": mean validation
  macro-F1, the study's choice; "macro_f1": the test score, the paper's); ties go to the
  first key in sorted (model-name) order; a NaN score never wins; None if nothing scores."""
  cand = [k for k in keys if k in cells and not np.isnan(cells[k][score])]
  return min(cand, key=lambda k: (-cells[k][score], k)) if cand else None


def pair_model(cells: dict, phase: str, a: str = "m1", b: str = "m2") -> str | None:
  """The one model on which methods a and b are compared in a phase: the highest mean
  validation macro-F1 over the two methods (ties: name order). Choosing per method would
  subtract two separately selected models and mix the method with the model."""
  score = {}
  for m in sorted({k[0] for k in cells}):
    va, vb = cells.get((m, a, phase)), cells.get((m, b, phase))
    if va and vb and not np.isnan(va["val_f1"] + vb["val_f1"]):
      score[m] = (va["val_f1"] + vb["val_f1"]) / 2
  return min(score, key=lambda m: (-score[m], m)) if score else None


# --- pairs ---------------------------------------------------------------------


def _on_same_videos(ua: dict, ub: dict):
  """(labels, predictions a, predictions b, subject clusters) of two units matched by video
  id, or None when their test videos differ."""
  if not np.array_equal(ua["video_ids"], ub["video_ids"]):
    return None
  if not np.array_equal(ua["y"], ub["y"]):
    raise UserError(f"Runs disagree on the labels of the same test videos: "
                    f"{ua.get('workdir', '')} {ub.get('workdir', '')} (runs on different "
                    "datasets?); give each study its own --workdir.")
  return ua["y"], ua["pred"], ub["pred"], ua["clusters"]


def _with_holm(rows: list[dict]) -> list[dict]:
  adjusted = metrics.holm([r["p_value"] for r in rows]) if rows else []
  return [dict(r, p_holm=float(h)) for r, h in zip(rows, adjusted)]


def _unit_pairs(cell_a: dict, cell_b: dict, n_resamples: int, **row) -> list[dict]:
  """cell_a - cell_b, one row per (split seed, seed) both ran on the same test videos
  (paired bootstrap; LOSO resamples subjects); `row` is copied into each."""
  rows = []
  for split_seed, seed in sorted(set(cell_a["units"]) & set(cell_b["units"])):
    ua, ub = cell_a["units"][(split_seed, seed)], cell_b["units"][(split_seed, seed)]
    same = _on_same_videos(ua, ub)
    if same is None:
      continue
    y, pa, pb, subjects = same
    r = metrics.paired_bootstrap(y, pa, pb, K, n_resamples=n_resamples, seed=seed,
                                 clusters=subjects if cell_a["loso"] else None)
    rows.append(dict(row, split_seed=split_seed, seed=seed, f1_a=ua["macro_f1"],
                     f1_b=ub["macro_f1"], diff=r["diff"], ci=list(r["ci"]),
                     p_value=r["p_value"], n_resamples=r["n_resamples"]))
  return rows


def paired_methods(cells: dict, n_resamples: int = PAIRED_RESAMPLES) -> list[dict]:
  """Method a - method b test macro-F1 for every pair of methods present (a before b in
  METHODS), per (model, phase, split seed, seed), on the same test videos matched by id
  (paired bootstrap; LOSO resamples subjects); p_holm adjusts over all the rows."""
  rows = []
  models = sorted({k[0] for k in cells})
  methods = [m for m in METHODS if any(k[1] == m for k in cells)]
  for model, phase in itertools.product(models, PHASES):
    for ma, mb in itertools.combinations(methods, 2):
      a, b = cells.get((model, ma, phase)), cells.get((model, mb, phase))
      if a and b:
        rows += _unit_pairs(a, b, n_resamples, model=model, phase=phase, a=ma, b=mb)
  return _with_holm(rows)


def paired_temporal(cells: dict, n_resamples: int = PAIRED_RESAMPLES) -> list[dict]:
  """Each temporal head (a model spec BACKBONE+HEAD[+frozen]) - its backbone's frame vote
  (the cell BACKBONE of the same method and phase), test macro-F1 per (split seed, seed)
  on the same test videos matched by id: "PoolFormer + GRU" vs "PoolFormer + voting" as
  one paired comparison; p_holm adjusts over all the rows."""
  rows = []
  for (model, method, phase), a in sorted(cells.items()):
    backbone, head, _ = temporal.parse_spec(model)
    b = cells.get((backbone, method, phase))
    if head != temporal.NONE and b:
      rows += _unit_pairs(a, b, n_resamples, model=model, vote=backbone, method=method,
                          phase=phase)
  return _with_holm(rows)


def paired_m1_m2(pairs: list[dict]) -> list[dict]:
  """The paper's pair of `paired_methods`' rows: M1 - M2 per (model, phase, split, seed)."""
  return [{"model": r["model"], "phase": r["phase"], "split_seed": r["split_seed"],
           "seed": r["seed"], "m1": r["f1_a"], "m2": r["f1_b"], "diff": r["diff"],
           "ci": r["ci"], "p_value": r["p_value"]}
          for r in pairs if (r["a"], r["b"]) == ("m1", "m2")]


def paired_difference(a: dict, b: dict, n_resamples: int = PAIRED_RESAMPLES) -> dict | None:
  """a - b, two cells of ONE model and phase, on the same test videos: one unit, the paired
  bootstrap (LOSO: over subjects); several (seeds, split seeds), the predictions of all
  units pooled and resampled by video (LOSO: by subject), so a video keeps every seed's
  prediction together; then `diff` is the pooled macro-F1 difference. None if no unit pairs."""
  keys = sorted(set(a["units"]) & set(b["units"]))
  same = [_on_same_videos(a["units"][k], b["units"][k]) for k in keys]
  if not same or any(s is None for s in same):
    return None
  y, pa, pb, subjects = (np.concatenate(x) for x in zip(*same))
  ids = np.concatenate([a["units"][k]["video_ids"] for k in keys])
  clusters = subjects if a["loso"] else (ids if len(keys) > 1 else None)
  r = metrics.paired_bootstrap(y, pa, pb, K, n_resamples=n_resamples, clusters=clusters)
  return {"diff": r["diff"], "ci": list(r["ci"]), "p_value": r["p_value"],
          "n_resamples": r["n_resamples"], "units": len(keys)}
