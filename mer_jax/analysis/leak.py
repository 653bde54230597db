"""The field's leaky epoch choice, measured on the same runs as the honest one.

Published MER results on the MEGC 2019 composite (HTNet's 0.860 UF1 / 0.848 UAR among them)
keep, for each held-out LOSO subject, the epoch whose predictions score best on THAT
subject's test videos. A run trained with `selection=test_fold_best_epoch` records every
epoch's test predictions (run.report.EPOCH_PREDICTIONS); from them `leaky_units` redoes the
field's choice per run (per LOSO fold, or the one holdout test set): the epoch of highest
test accuracy, ties to the later epoch (HTNet's `<=`). The honest figure is the same run's
own result, the epoch chosen on validation videos of training subjects (predictions_test.csv,
metrics.json). Both are pooled over folds (UF1/UAR; on the composite also per source dataset),
and the inflation, leaky − honest, gets a paired bootstrap over subjects. Everything here is
named leaky so that nobody mistakes it for a result.
"""
from __future__ import annotations

import pathlib

import numpy as np

from mer_jax import metrics
from mer_jax.analysis.runs import K, read_predictions, subject_clusters
from mer_jax.run.report import EPOCH_FILE, EPOCH_PREDICTIONS

KEY = "leaky_test_fold_best_epoch"       # study.json's key; the report's section says it
RESAMPLES = 10000
EXPLAINED = (
    "**What this number leaks.** For each held-out subject (each LOSO fold; on a holdout "
    "split, the one test set) the leaky figure keeps the epoch whose predictions are most "
    "accurate on that subject's TEST videos (ties: the later epoch), as HTNet's and MMNet's "
    "published code does. The test labels choose the model, so the held-out subject is no "
    "longer unseen: the figure is optimistic by construction and is not a result. The honest "
    "figure is the same runs' own: the epoch chosen on validation videos of training "
    "subjects only (each run's metrics.json). The leaky choice sees only the epochs a run "
    "trained (early stopping ends a run `patience` epochs after its validation best), so "
    "runs trained for a fixed, longer schedule leak more.")
INTERVAL = (
    "Inflation = leaky − honest on the same test videos, with a paired bootstrap 95 % CI "
    f"({RESAMPLES:,} resamples of subjects, whole subjects drawn with replacement). The chosen "
    "epochs are held fixed: a fold's choice depends only on its own subject's test videos and "
    "a drawn subject brings all of them, so choosing again inside each resample would pick "
    "the same epochs (under LOSO; on a holdout split the choice looked at the whole test set "
    "and the interval is conditional on it). It covers which subjects were tested, not "
    "training seeds.")


def epoch_files(workdir: str | pathlib.Path) -> dict[int, pathlib.Path]:
  """epoch (1-based) -> its test predictions CSV, for a run with selection=
  test_fold_best_epoch ({} for any other run)."""
  d = pathlib.Path(workdir) / EPOCH_PREDICTIONS
  pattern = EPOCH_FILE.format(epoch=0).replace("0000", "*")
  return {int(f.stem.rsplit("epoch", 1)[1]): f for f in sorted(d.glob(pattern))}


def leaky_epoch(workdir: str | pathlib.Path, classes: tuple[str, ...]) -> tuple[int, tuple]:
  """(epoch, its predictions as runs.read_predictions gives them, as indices into the run's
  `classes`) of the epoch with the highest test accuracy among a run's recorded epochs; ties
  go to the later epoch."""
  files = epoch_files(workdir)
  if not files:
    raise FileNotFoundError(f"{workdir} holds no {EPOCH_PREDICTIONS}/ (train it with "
                            "--config.selection=test_fold_best_epoch)")
  best, best_acc, best_pred = None, -1.0, None
  for epoch in sorted(files):
    pred = read_predictions(files[epoch], classes)
    acc = float(np.mean(pred[1] == pred[2]))
    if acc >= best_acc:
      best, best_acc, best_pred = epoch, acc, pred
  return best, best_pred


def _pooled(parts: list[tuple]) -> dict:
  ids = np.concatenate([p[0] for p in parts])
  o = np.argsort(ids, kind="stable")
  y, pred, subj, data = (np.concatenate([p[i] for p in parts])[o] for i in (1, 2, 3, 4))
  return {"video_ids": ids[o], "y": y, "pred": pred, "datasets": data,
          "clusters": subject_clusters(subj, data)}


def leaky_units(runs: list[dict], n_resamples: int = RESAMPLES) -> list[dict]:
  """One row per (model, method, phase, split seed, seed) whose every run recorded its
  epochs: honest and leaky UF1/UAR pooled over its folds, the inflation of each with its
  subject-cluster paired bootstrap, and each fold's validation- and test-chosen epochs;
  on runs over several source datasets (the composite) `per_dataset` holds the same figures
  on each dataset's videos."""
  groups = {}
  for r in runs:
    groups.setdefault((r["model"], r["method"], r["phase"], r["split_seed"], r["seed"]),
                      []).append(r)
  out = []
  for key, group in sorted(groups.items()):
    if not all(epoch_files(r["workdir"]) for r in group):
      continue
    group = sorted(group, key=lambda r: r["fold"])
    chosen = [leaky_epoch(r["workdir"], r["classes"]) for r in group]
    honest = _pooled([(r["video_ids"], r["y"], r["pred"], r["subjects"], r["datasets"])
                      for r in group])
    leaky = _pooled([pred for _, pred in chosen])
    if not np.array_equal(honest["video_ids"], leaky["video_ids"]):
      raise ValueError(f"{group[0]['workdir']}: the recorded epochs' test videos differ from "
                       "predictions_test.csv's")
    row = {"model": key[0], "method": key[1], "phase": key[2], "split_seed": key[3],
           "seed": key[4], "folds": len(group), "videos": int(len(honest["y"])),
           "epochs": [{"fold": r["fold"], "validation": r["best_epoch"], "leaky": e}
                      for r, (e, _) in zip(group, chosen)],
           **_inflation(honest, leaky["pred"], n_resamples)}
    datasets = np.unique(honest["datasets"])
    if len(datasets) > 1:     # the composite: the MEGC convention reports each source too
      row["per_dataset"] = {}
      for d in datasets:
        i = honest["datasets"] == d
        part = {k: honest[k][i] for k in ("y", "clusters")}
        row["per_dataset"][str(d)] = {
            "videos": int(i.sum()), "subjects": int(len(set(part["clusters"]))),
            **_inflation(dict(part, pred=honest["pred"][i]), leaky["pred"][i], n_resamples)}
    out.append(row)
  return out


def _inflation(honest: dict, leaky_pred: np.ndarray, n_resamples: int) -> dict:
  """uf1 and uar: honest, leaky, inflation = leaky − honest with its paired bootstrap over
  the videos' subject clusters."""
  out = {}
  for score, name in (("macro_f1", "uf1"), ("uar", "uar")):
    d = metrics.paired_bootstrap(honest["y"], leaky_pred, honest["pred"], K,
                                 n_resamples=n_resamples, clusters=honest["clusters"],
                                 score=score)
    out[name] = {"honest": d["f1_b"], "leaky": d["f1_a"], "inflation": d["diff"],
                 "ci": list(d["ci"]), "p_value": d["p_value"], "n_resamples": d["n_resamples"]}
  return out


def _f(x):
  return "—" if x is None or x != x else f"{x:.4f}"


def section(rows: list[dict]) -> list[str]:
  """The report's section on the leaky choice (empty when no run recorded its epochs)."""
  if not rows:
    return []
  lines = ["## Leaky: the epoch chosen on each test fold (test_fold_best_epoch) — NOT a result",
           "", EXPLAINED, "", INTERVAL, "",
           "| model | method | phase | seed | folds | videos | UF1 honest | UF1 leaky | "
           "UF1 inflation | 95 % CI | UAR honest | UAR leaky | UAR inflation | 95 % CI | "
           "folds whose epoch changed |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|"]
  for r in rows:
    changed = sum(e["validation"] != e["leaky"] for e in r["epochs"])
    lines.append(
        f"| {r['model']} | {r['method'].upper()} | {r['phase'].upper()} | {r['seed']} | "
        f"{r['folds']} | {r['videos']} | {_scores(r['uf1'])} | {_scores(r['uar'])} | "
        f"{changed} of {r['folds']} |")
  several = [r for r in rows if r.get("per_dataset")]
  if several:
    lines += ["", "Per source dataset (the MEGC convention; the same runs and chosen epochs, "
              "each dataset's videos alone, its subjects resampled):", "",
              "| model | method | phase | seed | dataset | subjects | videos | UF1 honest | "
              "UF1 leaky | UF1 inflation | 95 % CI | UAR honest | UAR leaky | UAR inflation | "
              "95 % CI |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in several:
      for d, x in r["per_dataset"].items():
        lines.append(f"| {r['model']} | {r['method'].upper()} | {r['phase'].upper()} | "
                     f"{r['seed']} | {d} | {x['subjects']} | {x['videos']} | "
                     + " | ".join(_scores(x[s]) for s in ("uf1", "uar")) + " |")
  return lines + [""]


def _scores(s: dict) -> str:
  return (f"{_f(s['honest'])} | {_f(s['leaky'])} | {_f(s['inflation'])} | "
          f"[{_f(s['ci'][0])}, {_f(s['ci'][1])}]")
