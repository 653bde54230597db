"""A study's finished runs, read back and summarised per cell.

The plan (study_plan.json, written by mer_jax.study) says which cells a study
should hold; `gather` reads every finished run under a study root (metrics.json
and predictions_test.csv; each run's coordinates come from its own saved
config, so the directory layout is mer_jax.study's business); `summarise_cells`
pools a cell's seeds, split seeds and LOSO folds into one score with its
interval: a cell's interval is that of its seed mean (videos and seeds
resampled); pooled LOSO intervals resample subjects.
"""
from __future__ import annotations

import csv
import json
import os
import pathlib

import numpy as np

from mer_jax import metrics
from mer_jax.data import labels
from mer_jax.data.labels import EMOTIONS
from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method
from mer_jax.models import temporal
from mer_jax.plumbing.errors import UserError
from mer_jax.run import sources
from mer_jax.run.report import DEFAULT_DATASET

METHODS = Method.names()                                   # m1, m2, m2a, m3
PAPER_METHODS = tuple(m.value for m in (Method.M1, Method.M2))  # the paper's two
PHASES = tuple(p.value for p in Phase)
# The largest head of any label scheme: the class count of the analyses that pool runs
# (compare, factorial, leak). Their scores are macro-F1 and UAR over the classes present,
# which absent classes do not change; a cell's own figures use its runs' `classes`.
K = max(len(s.classes) for s in labels.SCHEMES.values())
PLAN = "study_plan.json"
RUN_FILES = ("*/seed*/metrics.json", "*/seed*/fold*/metrics.json", "*/*/seed*/metrics.json")


# --- the plan: which cells a study should hold ----------------------------------


def cell_coordinates(model, method, phase, seed, fold, split_seed) -> tuple:
  """A cell's identity in the plan and in gathered runs."""
  return (str(model), str(method), str(phase), int(seed), int(fold), int(split_seed))


def write_plan(root: pathlib.Path, plan: dict) -> None:
  """WORKDIR/study_plan.json, atomically (every SLURM task writes the same plan)."""
  tmp = root / f".{PLAN}.{os.getpid()}"
  tmp.write_text(json.dumps(plan, indent=1))
  os.replace(tmp, root / PLAN)


def read_plan(root: pathlib.Path) -> dict | None:
  path = root / PLAN
  return json.loads(path.read_text()) if path.exists() else None


# --- gathering -----------------------------------------------------------------


def read_predictions(path: pathlib.Path, classes=EMOTIONS):
  """Video ids, labels, predictions (indices into the run's `classes`: metrics.json's,
  CASME II's EMOTIONS in runs from before it), subjects and source datasets of a predictions CSV
  (run.report.PREDICTION_FIELDS); a video's subject is its `subject` column or, in files
  without one, the part of its id before '/'; its dataset its `dataset` column or, in
  files without one, run.report.DEFAULT_DATASET."""
  with open(path) as f:
    rows = list(csv.DictReader(f))
  ids = np.array([r["video_id"] for r in rows], dtype=str)
  y = np.array([classes.index(r["label"]) for r in rows], dtype=np.int64)
  p = np.array([classes.index(r["pred"]) for r in rows], dtype=np.int64)
  subjects = np.array([r.get("subject") or r["video_id"].split("/")[0] for r in rows],
                      dtype=str)
  datasets = np.array([r.get("dataset") or DEFAULT_DATASET for r in rows], dtype=str)
  return ids, y, p, subjects, datasets


def subject_clusters(subjects, datasets) -> np.ndarray:
  """The resampling cluster of each video: its subject within its source dataset (two
  datasets may both have a subject "01"). On one dataset the draws equal those of the
  bare subjects (the same sorted order)."""
  return np.char.add(np.char.add(np.asarray(datasets, str), "/"), np.asarray(subjects, str))


def _score(block: dict | None) -> float:
  v = (block or {}).get("macro_f1")
  return float("nan") if v is None else float(v)


def gather(root: pathlib.Path) -> list[dict]:
  """One record per finished run under root (CELL/seed<S>[/fold<K>] or CELL/<split>/seed<S>):
  its cell coordinates from its saved config (the model as its spec, e.g.
  poolformer_s12+gru for a temporal head: mer_jax.models.temporal.spec_of), its data in one
  name (data_name: run.sources.data_name; `dataset` is its build's fingerprint), validation
  macro-F1, test predictions."""
  out = []
  for mfile in sorted(f for pattern in RUN_FILES for f in root.glob(pattern)):
    w = mfile.parent
    m = json.loads(mfile.read_text())
    c, d = m["config"], m["config"]["data"]
    protocol = d.get("protocol", "paper")
    classes = tuple(m.get("classes", EMOTIONS))
    ids, y, p, subjects, datasets = read_predictions(w / "predictions_test.csv", classes)
    out.append({"model": temporal.spec_of(c["model"]), "method": d["method"], "phase": d["phase"],
                "seed": int(c["seed"]), "fold": int(d.get("fold", -1)) if protocol == "loso"
                else -1, "protocol": protocol, "split": d.get("split", "video"),
                "split_seed": int(d.get("split_seed", 0)),
                "val_f1": _score(m.get("validation")), "dataset": m.get("dataset"),
                "data_name": sources.data_name(d),
                "video_ids": ids, "y": y, "pred": p, "subjects": subjects,
                "datasets": datasets, "train_videos": m.get("train_videos"),
                "best_epoch": m.get("best_epoch"), "workdir": str(w), "classes": classes})
  kinds = {(r["protocol"], r["split"]) for r in out}
  if len(kinds) > 1:
    raise UserError(f"{root} holds runs of several protocols or split kinds "
                    f"({', '.join(sorted('/'.join(k) for k in kinds))}); give each study "
                    "its own --workdir.")
  return out


# --- summaries -----------------------------------------------------------------

def _nanmean_rows(rows) -> list[float]:
  a = np.asarray(rows, np.float64)
  n = (~np.isnan(a)).sum(0)
  return [float(v) for v in np.where(n > 0, np.nansum(a, 0) / np.maximum(n, 1), np.nan)]


def _unit(runs: list[dict]) -> dict:
  """One (split seed, seed) of a cell: its run, or its LOSO folds pooled; videos sorted by id."""
  ids = np.concatenate([r["video_ids"] for r in runs])
  order = np.argsort(ids, kind="stable")
  y = np.concatenate([r["y"] for r in runs])[order]
  p = np.concatenate([r["pred"] for r in runs])[order]
  k = len(runs[0]["classes"])
  rep = metrics.classification_report(y, p, k)
  per_fold = [metrics.macro_f1(r["y"], r["pred"], k) for r in runs]
  subjects = np.concatenate([r["subjects"] for r in runs])[order]
  datasets = np.concatenate([r["datasets"] for r in runs])[order]
  return {"video_ids": ids[order], "y": y, "pred": p, "subjects": subjects,
          "datasets": datasets, "clusters": subject_clusters(subjects, datasets),
          "macro_f1": rep["macro_f1"], "uar": rep["uar"], "per_class_f1": rep["per_class_f1"],
          "confusion": rep["confusion"], "val_f1": metrics.mean_std([r["val_f1"] for r in runs])[0],
          "folds": len(runs), "fold_mean": metrics.mean_std(per_fold)[0], "k": k,
          "fold_std": metrics.mean_std(per_fold)[1]}


def _interval(units: list[dict], n_resamples: int, by_subject: bool):
  """95 % CI of the mean macro-F1 of units on the same test videos: one unit, a bootstrap
  stratified by class; several, the seed-mean bootstrap (videos and seeds resampled). LOSO
  (by_subject) resamples subjects instead of videos."""
  ids = units[0]["video_ids"]
  if any(not np.array_equal(u["video_ids"], ids) for u in units):
    return float("nan"), float("nan")       # seeds on different videos: no joint interval
  clusters = units[0]["clusters"] if by_subject else None
  if len(units) == 1:
    return metrics.bootstrap_ci(units[0]["y"], units[0]["pred"], units[0].get("k", K),
                                n_resamples=n_resamples, clusters=clusters)
  return metrics.seed_mean_ci(units[0]["y"], np.stack([u["pred"] for u in units]),
                              units[0].get("k", K),
                              n_resamples=n_resamples, clusters=clusters)


def _pooled_over_splits(units: dict, n_resamples: int):
  """(macro-F1, CI) of the test predictions of every split seed pooled: per seed the splits'
  test sets one after another (their videos differ and may repeat), then the seed mean with
  its stratified bootstrap. Only seeds run on every split count."""
  split_seeds = sorted({k[0] for k in units})
  seeds = sorted(set.intersection(*({k[1] for k in units if k[0] == s} for s in split_seeds)))
  if not seeds:
    return float("nan"), (float("nan"), float("nan"))
  pooled = [{"video_ids": np.concatenate([units[(s, seed)]["video_ids"] for s in split_seeds]),
             "y": np.concatenate([units[(s, seed)]["y"] for s in split_seeds]),
             "pred": np.concatenate([units[(s, seed)]["pred"] for s in split_seeds])}
            for seed in seeds]
  f1 = float(np.mean([metrics.macro_f1(u["y"], u["pred"], K) for u in pooled]))
  return f1, _interval(pooled, n_resamples, by_subject=False)


def per_dataset(units: list[dict], n_resamples: int) -> dict:
  """dataset -> UF1 and UAR of a cell's predictions restricted to that source dataset
  (the MEGC convention reports the composite per dataset): mean over the units, with the
  subject-clustered interval of the mean UF1, and the dataset's videos and subjects."""
  out = {}
  for d in sorted(set(units[0]["datasets"])):
    sub = []
    for u in units:
      i = u["datasets"] == d
      sub.append(dict({k: u[k][i] for k in ("video_ids", "y", "pred", "subjects", "clusters")},
                      k=u["k"]))
    reps = [metrics.classification_report(u["y"], u["pred"], u["k"]) for u in sub]
    out[d] = {"uf1": metrics.mean_std([r["macro_f1"] for r in reps])[0],
              "uar": metrics.mean_std([r["uar"] for r in reps])[0],
              "ci": tuple(_interval(sub, n_resamples, by_subject=True)),
              "videos": int(len(sub[0]["y"])), "subjects": int(len(set(sub[0]["subjects"])))}
  return out


def summarise_cells(runs: list[dict], n_resamples: int = 1000,
                    expected_folds: int | None = None) -> dict:
  """(model, method, phase) -> the cell's figures over its units ((split seed, seed); a LOSO
  unit pools its folds): test macro-F1 mean and spread (sd over seeds, or over split seeds
  when there are several), mean validation macro-F1, the interval of the mean, per-class F1
  averaged over units, confusion summed over units; LOSO: fold counts against expected_folds."""
  groups = {}
  for r in runs:
    groups.setdefault((r["model"], r["method"], r["phase"]), {}).setdefault(
        (r["split_seed"], r["seed"]), []).append(r)
  out = {}
  for key, by_unit in sorted(groups.items()):
    loso = next(iter(by_unit.values()))[0]["protocol"] == "loso"
    units = {k: _unit(v) for k, v in sorted(by_unit.items())}
    splits = {}
    for s in sorted({k[0] for k in units}):
      us = [u for k, u in units.items() if k[0] == s]
      mean, std = metrics.mean_std([u["macro_f1"] for u in us])
      splits[s] = {"macro_f1": mean, "seed_std": std, "n_seeds": len(us),
                   "val_f1": metrics.mean_std([u["val_f1"] for u in us])[0],
                   "ci": _interval(us, n_resamples, loso)}
    if len(splits) == 1:
      (only,) = splits.values()
      mean, std, ci, pooled = only["macro_f1"], only["seed_std"], only["ci"], None
    else:
      mean, std = metrics.mean_std([v["macro_f1"] for v in splits.values()])
      pooled, ci = _pooled_over_splits(units, n_resamples)
    cell = {"units": units, "splits": splits,
            "classes": next(iter(by_unit.values()))[0]["classes"], "macro_f1": mean, "macro_f1_std": std,
            "spread": "seeds" if len(splits) == 1 else "split seeds", "ci": tuple(ci),
            "pooled_macro_f1": pooled,
            "val_f1": metrics.mean_std([u["val_f1"] for u in units.values()])[0],
            "uar": metrics.mean_std([u["uar"] for u in units.values()])[0],
            "n_seeds": len({k[1] for k in units}), "n_units": len(units), "loso": loso,
            "per_class_f1": _nanmean_rows([u["per_class_f1"] for u in units.values()]),
            "confusion": np.sum([u["confusion"] for u in units.values()], 0).tolist()}
    if loso:
      folds = min(u["folds"] for u in units.values())
      cell.update(folds=folds, expected_folds=expected_folds,
                  complete=expected_folds is not None and folds >= expected_folds,
                  per_dataset=per_dataset(list(units.values()), n_resamples))
    out[key] = cell
  return out
