"""The study's report from its finished runs: gathered, summarised, chosen, paired, tabled, drawn.

`report(root)` reads every finished run under WORKDIR (metrics.json and
predictions_test.csv; each run's coordinates come from its own saved config,
so the directory layout is mer_jax.study's business) and writes report.md,
study.json and the figures (mer_jax.study's docstring lists them). A study's
report can be remade from its run directories (`python -m mer_jax.study
--report_only`).

The statistics a reviewer checks first:
- every "best" (Table III, Table V, Fig. 2, Fig. 4, the M1 − M2 column) is the
  model with the highest VALIDATION macro-F1 (the best checkpoint's, from the
  run's metrics.json; averaged over seeds, split seeds and LOSO folds); ties go
  to the first in name order. Its test score is printed beside it. The paper's
  choice by test score is a separate table labelled optimistic;
- the headline M1 − M2 is paired: one model per phase (the highest mean
  validation macro-F1 over M1 and M2), both methods on the same test videos;
- a cell's interval is that of its seed mean (videos and seeds resampled);
  pooled LOSO intervals resample subjects; p-values are add-one (never 0) with
  Holm-adjusted ones beside them;
- study_plan.json (written by mer_jax.study) says which cells the study should
  hold and how many LOSO folds there are: a report of an unfinished study, or a
  LOSO cell with missing folds, says so.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import pathlib

import numpy as np

from mer_jax import metrics
from mer_jax.run import report
from mer_jax.data.labels import EMOTIONS
from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method
from mer_jax.plumbing.errors import NotFound, UserError

METHODS = Method.names()                                   # m1, m2, m2a, m3
PAPER_METHODS = tuple(m.value for m in (Method.M1, Method.M2))  # the paper's two
PHASES = tuple(p.value for p in Phase)
K = len(EMOTIONS)
PAIRED_RESAMPLES = 10000
PLAN = "study_plan.json"
RUN_FILES = ("*/seed*/metrics.json", "*/seed*/fold*/metrics.json", "*/*/seed*/metrics.json")
CHOICE = ("**How the best model is chosen:** for each method and phase, the model with the "
          "highest validation macro-F1 (its best checkpoint on the validation videos, averaged "
          "over seeds, split seeds and LOSO folds); ties go to the model whose name sorts "
          "first. Its test macro-F1 is shown beside it and played no part in the choice.")


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


def _read_predictions(path: pathlib.Path):
  """Video ids, labels, predictions and subjects of a predictions CSV; a video's subject is
  its `subject` column or, in files without one, the part of its id before '/'."""
  with open(path) as f:
    rows = list(csv.DictReader(f))
  ids = np.array([r["video_id"] for r in rows], dtype=str)
  y = np.array([EMOTIONS.index(r["label"]) for r in rows], dtype=np.int64)
  p = np.array([EMOTIONS.index(r["pred"]) for r in rows], dtype=np.int64)
  subjects = np.array([r.get("subject") or r["video_id"].split("/")[0] for r in rows],
                      dtype=str)
  return ids, y, p, subjects


def _score(block: dict | None) -> float:
  v = (block or {}).get("macro_f1")
  return float("nan") if v is None else float(v)


def gather(root: pathlib.Path) -> list[dict]:
  """One record per finished run under root (CELL/seed<S>[/fold<K>] or CELL/<split>/seed<S>):
  its cell coordinates from its saved config, validation macro-F1, test predictions."""
  out = []
  for mfile in sorted(f for pattern in RUN_FILES for f in root.glob(pattern)):
    w = mfile.parent
    m = json.loads(mfile.read_text())
    c, d = m["config"], m["config"]["data"]
    protocol = d.get("protocol", "paper")
    ids, y, p, subjects = _read_predictions(w / "predictions_test.csv")
    out.append({"model": c["model"]["name"], "method": d["method"], "phase": d["phase"],
                "seed": int(c["seed"]), "fold": int(d.get("fold", -1)) if protocol == "loso"
                else -1, "protocol": protocol, "split": d.get("split", "video"),
                "split_seed": int(d.get("split_seed", 0)),
                "val_f1": _score(m.get("validation")), "dataset": m.get("dataset"),
                "video_ids": ids, "y": y, "pred": p, "subjects": subjects, "workdir": str(w)})
  kinds = {(r["protocol"], r["split"]) for r in out}
  if len(kinds) > 1:
    raise UserError(f"{root} holds runs of several protocols or split kinds "
                    f"({', '.join(sorted('/'.join(k) for k in kinds))}); give each study "
                    "its own --workdir.")
  return out


# --- summaries -----------------------------------------------------------------


def _fmt(x, d=4):
  return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{d}f}"


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
  rep = metrics.classification_report(y, p, K)
  per_fold = [metrics.macro_f1(r["y"], r["pred"], K) for r in runs]
  return {"video_ids": ids[order], "y": y, "pred": p,
          "subjects": np.concatenate([r["subjects"] for r in runs])[order],
          "macro_f1": rep["macro_f1"], "uar": rep["uar"], "per_class_f1": rep["per_class_f1"],
          "confusion": rep["confusion"], "val_f1": metrics.mean_std([r["val_f1"] for r in runs])[0],
          "folds": len(runs), "fold_mean": metrics.mean_std(per_fold)[0],
          "fold_std": metrics.mean_std(per_fold)[1]}


def _interval(units: list[dict], n_resamples: int, by_subject: bool):
  """95 % CI of the mean macro-F1 of units on the same test videos: one unit, a bootstrap
  stratified by class; several, the seed-mean bootstrap (videos and seeds resampled). LOSO
  (by_subject) resamples subjects instead of videos."""
  ids = units[0]["video_ids"]
  if any(not np.array_equal(u["video_ids"], ids) for u in units):
    return float("nan"), float("nan")       # seeds on different videos: no joint interval
  clusters = units[0]["subjects"] if by_subject else None
  if len(units) == 1:
    return metrics.bootstrap_ci(units[0]["y"], units[0]["pred"], K, n_resamples=n_resamples,
                                clusters=clusters)
  return metrics.seed_mean_ci(units[0]["y"], np.stack([u["pred"] for u in units]), K,
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
    cell = {"units": units, "splits": splits, "macro_f1": mean, "macro_f1_std": std,
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
                  complete=expected_folds is not None and folds >= expected_folds)
    out[key] = cell
  return out


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
  """(labels, predictions a, predictions b, subjects) of two units matched by video id, or
  None when their test videos differ."""
  if not np.array_equal(ua["video_ids"], ub["video_ids"]):
    return None
  if not np.array_equal(ua["y"], ub["y"]):
    raise UserError(f"Runs disagree on the labels of the same test videos: "
                    f"{ua.get('workdir', '')} {ub.get('workdir', '')} (runs on different "
                    "datasets?); give each study its own --workdir.")
  return ua["y"], ua["pred"], ub["pred"], ua["subjects"]


def _with_holm(rows: list[dict]) -> list[dict]:
  adjusted = metrics.holm([r["p_value"] for r in rows]) if rows else []
  return [dict(r, p_holm=float(h)) for r, h in zip(rows, adjusted)]


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
      if not a or not b:
        continue
      for split_seed, seed in sorted(set(a["units"]) & set(b["units"])):
        ua, ub = a["units"][(split_seed, seed)], b["units"][(split_seed, seed)]
        same = _on_same_videos(ua, ub)
        if same is None:
          continue
        y, pa, pb, subjects = same
        r = metrics.paired_bootstrap(y, pa, pb, K, n_resamples=n_resamples, seed=seed,
                                     clusters=subjects if a["loso"] else None)
        rows.append({"model": model, "phase": phase, "split_seed": split_seed, "seed": seed,
                     "a": ma, "b": mb, "f1_a": ua["macro_f1"], "f1_b": ub["macro_f1"],
                     "diff": r["diff"], "ci": list(r["ci"]), "p_value": r["p_value"],
                     "n_resamples": r["n_resamples"]})
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


# --- Table I -------------------------------------------------------------------


def table_one(runs: list[dict]) -> list[str]:
  """Table I from the quality.json of the builds the runs trained on (metrics.json's
  `dataset`), so it describes their data and no other build of the same name."""
  from mer_jax.data import build
  built = {(r["method"], r["phase"]): r["dataset"]["dir"] for r in runs if r["dataset"]}
  lines = ["| method | resolution | colour | face-centring rate | information density "
           "| training samples AF / KFS / MFS |", "|---|---|---|---:|---:|---|"]
  for method in METHODS:
    qs = {}
    for phase in PHASES:
      d = built.get((method, phase))
      if d is not None and pathlib.Path(d).exists():
        qs[phase] = build.read_quality(d)
    if not qs:
      continue
    q = qs.get("mfs") or next(iter(qs.values()))
    h, w, c = q["image_shape"]
    samples = " / ".join(str(qs[p]["splits"]["train"]["frames"]) if p in qs else "—"
                         for p in PHASES)
    colour = {"m3": "flow (u, v, magnitude)"}.get(method, "RGB" if c == 3 else "grayscale")
    lines.append(f"| {method.upper()} | {h}x{w} | {colour} | "
                 f"{q['face_centring_rate']:.3f} | {q['information_density']:,} | {samples} |")
  return lines


# --- report --------------------------------------------------------------------


def _f1_cell(v):
  if v is None:
    return "—"
  s = f"{v['macro_f1']:.4f}"
  if v["n_units"] > 1:
    s += f" ± {v['macro_f1_std']:.4f}"
  lo, hi = v["ci"]
  s += f" [{_fmt(lo, 3)}, {_fmt(hi, 3)}]"
  return s + (" (incomplete)" if v["loso"] and not v["complete"] else "")


def _ci(ci, d=4):
  return f"[{_fmt(ci[0], d)}, {_fmt(ci[1], d)}]"


def _missing_cells(plan: dict | None, runs: list[dict]) -> list[tuple] | None:
  """Planned cells without a finished run (None when the study has no plan)."""
  if plan is None:
    return None
  done = {cell_coordinates(r["model"], r["method"], r["phase"], r["seed"], r["fold"],
                           r["split_seed"]) for r in runs}
  return [c for c in (tuple(x) for x in plan["cells"]) if cell_coordinates(*c) not in done]


def _legend(cells: dict) -> str:
  loso = any(v["loso"] for v in cells.values())
  splits = any(v["spread"] == "split seeds" for v in cells.values())
  s = "Test macro-F1 at the video level; ± = standard deviation over " + (
      "split seeds (of each split's seed mean)" if splits else "seeds") + "; [low, high] = 95 % "
  if splits:
    return s + ("bootstrap CI of the macro-F1 of the test predictions of every split pooled "
                "(stratified by class; averaged over seeds when there are several).")
  if loso:
    return s + ("bootstrap CI of the UF1 of the predictions pooled over folds, resampling "
                "subjects (and seeds, for the seed mean).")
  return s + ("bootstrap CI of the seed mean, resampling test videos within each class "
              "(and seeds, when there are several).")


def report(root: pathlib.Path, n_resamples: int = 1000) -> str:
  """Writes report.md, study.json and the figures of the finished runs under root; returns
  report.md's text. An unfinished plan or a LOSO cell missing folds is said at the top."""
  runs = gather(root)
  if not runs:
    raise NotFound(f"No finished runs under {root} (no */seed*/metrics.json).")
  plan = read_plan(root)
  cells = summarise_cells(runs, n_resamples, plan.get("loso_folds") if plan else None)
  models = sorted({k[0] for k in cells})
  methods = [me for me in METHODS if any(k[1] == me for k in cells)]
  phases = [p for p in PHASES if any(k[2] == p for k in cells)]
  loso = any(v["loso"] for v in cells.values())
  seeds = sorted({k[1] for v in cells.values() for k in v["units"]})
  split_seeds = sorted({k[0] for v in cells.values() for k in v["units"]})
  missing = _missing_cells(plan, runs)
  partial_loso = [k for k, v in cells.items() if v["loso"] and not v["complete"]]
  complete = missing == [] and not partial_loso
  lines = [f"# Study report ({root.name})", ""]
  if missing is None:
    lines += ["**Completeness unknown:** no study_plan.json (a study run by an older version); "
              "rerun the study command (finished cells are skipped) to record its plan.", ""]
  elif missing:
    shown = ", ".join("_".join(map(str, c[:3])) + f" seed{c[3]}" + (
        f" fold{c[4]:02d}" if c[4] >= 0 else "") + (f" split{c[5]}" if c[5] else "")
        for c in missing[:10])
    lines += [f"**Incomplete study: {len(missing)} of {len(plan['cells'])} planned cells have "
              f"no results yet** ({shown}{', ...' if len(missing) > 10 else ''}). The tables "
              "hold the finished cells only; run `python -m mer_jax.study --workdir "
              f"{root} --report_only` again once every task has finished.", ""]
  if partial_loso:
    lines += [f"**Incomplete LOSO cells:** {len(partial_loso)} cell(s) hold fewer folds than "
              f"the {plan.get('loso_folds') if plan else 'unknown number of'} subjects; their "
              "pooled figures are marked (incomplete) and are not LOSO results.", ""]
  split_kind = runs[0]["split"]
  protocol = ("leave-one-subject-out (predictions pooled over folds: UF1/UAR)" if loso else
              f"holdout split 201/26/28, {'by subject' if split_kind == 'subject' else 'by video (the paper split when split seed 0)'}")
  lines += [f"{len(runs)} runs: models {', '.join(models)}; seeds {seeds}"
            + (f"; split seeds {split_seeds}" if split_seeds != [0] else "")
            + f"; protocol {protocol}.", _legend(cells), "", CHOICE, ""]
  lines += ["## Table I: dataset and methodology", ""] + table_one(runs) + [""]

  # Table III, selected on validation.
  best = {(me, p): best_key(cells, [(m, me, p) for m in models]) for me in methods
          for p in phases}
  paper_pair = all(me in methods for me in PAPER_METHODS)
  heads = {}
  if paper_pair:
    for p in phases:
      m = pair_model(cells, p)
      d = paired_difference(cells[(m, "m1", p)], cells[(m, "m2", p)]) if m else None
      if d:
        heads[p] = dict(d, model=m)
    for p, h in zip(heads, metrics.holm([h["p_value"] for h in heads.values()])
                    if heads else []):
      heads[p]["p_holm"] = float(h)
  lines += ["## Table III: best model per phase, chosen on validation" + (
      "" if methods == list(PAPER_METHODS) else " (every method run)"), ""]
  if paper_pair:
    lines += ["M1 − M2: one model per phase (the highest validation macro-F1 averaged over M1 "
              "and M2), both methods on the same test videos: paired bootstrap "
              f"({PAIRED_RESAMPLES:,} resamples; several seeds pooled, resampling videos) "
              f"with Holm-adjusted p over the {len(heads)} phase(s).", ""]
  lines += ["| phase | " + " | ".join(f"{me.upper()} best model | val macro-F1 | test macro-F1"
                                     for me in methods)
            + (" | M1 − M2 model | M1 − M2 (test) | 95 % CI | p | p (Holm) |" if paper_pair
               else " |"),
            "|---|" + "---|---:|---|" * len(methods) + ("---|---:|---|---:|---:|" if paper_pair
                                                         else "")]
  for p in phases:
    row = [p.upper()]
    for me in methods:
      k = best[(me, p)]
      row += [k[0], _fmt(cells[k]["val_f1"]), _f1_cell(cells[k])] if k else ["—"] * 3
    if paper_pair:
      h = heads.get(p)
      row += [h["model"], _fmt(h["diff"]), _ci(h["ci"]), metrics.format_p(
          h["p_value"], h["n_resamples"]), metrics.format_p(h["p_holm"], h["n_resamples"])
              ] if h else ["—"] * 5
    lines.append("| " + " | ".join(row) + " |")
  lines += [""]

  # The paper's view, kept apart.
  by_test = {(me, p): best_key(cells, [(m, me, p) for m in models], "macro_f1")
             for me in methods for p in phases}
  lines += ["## Selected on the test set, as the paper did — optimistic", "",
            "Each method's best model by its own test macro-F1, and M1 − M2 as the difference "
            "of the two separately chosen test scores: the choice looks at the test videos, so "
            "these numbers are biased upwards (winner's curse) and are not the study's result.",
            "", "| phase | " + " | ".join(f"{me.upper()} best by test | test macro-F1"
                                           for me in methods)
            + (" | M1 − M2 |" if paper_pair else " |"),
            "|---|" + "---|---:|" * len(methods) + ("---:|" if paper_pair else "")]
  test_diff = {}
  for p in phases:
    row = [p.upper()]
    for me in methods:
      k = by_test[(me, p)]
      row += [k[0], _fmt(cells[k]["macro_f1"])] if k else ["—", "—"]
    if paper_pair:
      k1, k2 = by_test[("m1", p)], by_test[("m2", p)]
      if k1 and k2:
        test_diff[p] = cells[k1]["macro_f1"] - cells[k2]["macro_f1"]
      row.append(_fmt(test_diff.get(p)))
    lines.append("| " + " | ".join(row) + " |")
  lines += [""]

  lines += ["## Table IV: temporal evolution per model (test macro-F1)", "",
            "| model | method | AF | KFS | MFS |", "|---|---|---|---|---|"]
  for m in models:
    for method in METHODS:
      if not any((m, method, p) in cells for p in PHASES):
        continue
      lines.append(f"| {m} | {method.upper()} | " + " | ".join(
          _f1_cell(cells.get((m, method, p))) for p in PHASES) + " |")
  lines += [""]

  overall = {me: best_key(cells, [k for k in cells if k[1] == me]) for me in methods}
  overall = {me: k for me, k in overall.items() if k}
  lines += ["## Table V: per-class test F1 of the best models (chosen on validation over "
            "models and phases; averaged over seeds; — = class absent from the test set)",
            "", "| model | " + " | ".join(EMOTIONS) + " |", "|---|" + "---:|" * K]
  for method, key in overall.items():
    lines.append(f"| {key[0]} {method.upper()} {key[2].upper()} | " +
                 " | ".join(_fmt(x, 3) for x in cells[key]["per_class_f1"]) + " |")
  lines += [""]

  pairs = paired_methods(cells)
  if pairs:
    split_col = split_seeds != [0]
    lines += ["## Method pairs on the same test videos (paired bootstrap)", "",
              "Every pair of methods run, per model, phase and seed: the difference A − B of "
              "test macro-F1 on the same test videos (matched by video id), with a paired "
              f"bootstrap 95 % CI and two-sided p-value ({PAIRED_RESAMPLES:,} resamples"
              + (", resampling subjects" if loso else ", within classes") + "; p is the "
              "add-one estimate, never 0). p (Holm) adjusts for the "
              f"{len(pairs)} comparison(s) in this table.", "",
              "| model | phase |" + (" split seed |" if split_col else "") + " seed | A | B | "
              "A macro-F1 | B macro-F1 | A − B | 95 % CI | p | p (Holm) |",
              "|---|---|" + ("---:|" if split_col else "") + "---:|---|---|---:|---:|---:|---|---:|---:|"]
    for r in pairs:
      lines.append(f"| {r['model']} | {r['phase'].upper()} | "
                   + (f"{r['split_seed']} | " if split_col else "")
                   + f"{r['seed']} | {r['a'].upper()} | {r['b'].upper()} | {_fmt(r['f1_a'])} | "
                   f"{_fmt(r['f1_b'])} | {_fmt(r['diff'])} | {_ci(r['ci'])} | "
                   f"{metrics.format_p(r['p_value'], r['n_resamples'])} | "
                   f"{metrics.format_p(r['p_holm'], r['n_resamples'])} |")
    lines += [""]

  if split_seeds != [0]:
    lines += ["## Split variance", "",
              f"Each cell on {len(split_seeds)} split seeds (split seed 0 is "
              + ("the first subject-independent split" if split_kind == "subject" else
                 "the paper's split") + "). Mean ± sd over split seeds of each split's seed "
              "mean; pooled: the macro-F1 of every split's test predictions taken together "
              "(a video may be in several test sets), with its stratified bootstrap CI: "
              "how the model does across split draws, not on one test set.", "",
              "| model | method | phase | splits | mean ± sd over splits | pooled macro-F1 | "
              "95 % CI |", "|---|---|---|---:|---|---:|---|"]
    for k, v in cells.items():
      lines.append(f"| {k[0]} | {k[1].upper()} | {k[2].upper()} | {len(v['splits'])} | "
                   f"{_fmt(v['macro_f1'])} ± {_fmt(v['macro_f1_std'])} | "
                   f"{_fmt(v['pooled_macro_f1'])} | {_ci(v['ci'])} |")
    lines += [""]

  if loso:
    lines += ["## Leave-one-subject-out (UF1/UAR pooled over folds)", "",
              "| model | method | phase | folds | UF1 | 95 % CI (subjects) | UAR | "
              "per-fold macro-F1 mean ± sd | status |", "|---|---|---|---:|---:|---|---:|---|---|"]
    for k, v in cells.items():
      u = list(v["units"].values())
      exp = v["expected_folds"]
      lines.append(f"| {k[0]} | {k[1].upper()} | {k[2].upper()} | {v['folds']} of "
                   f"{exp if exp is not None else '?'} | {_fmt(v['macro_f1'])} | "
                   f"{_ci(v['ci'])} | {_fmt(v['uar'])} | "
                   f"{_fmt(metrics.mean_std([x['fold_mean'] for x in u])[0])} ± "
                   f"{_fmt(metrics.mean_std([x['fold_std'] for x in u])[0])} | "
                   f"{'complete' if v['complete'] else 'INCOMPLETE: not a LOSO result'} |")
    lines += ["", "Model selection (early stopping) used validation videos of the training "
              "subjects only; the held-out subject was never looked at before testing.", ""]

  lines += ["## Figures", "", "![Fig. 2](fig2_preprocessing.png)",
            "![Fig. 3](fig3_temporal.png)", "![Fig. 4](fig4_confusion.png)", ""]
  figures(root, cells, models, best, overall)
  text = "\n".join(lines)
  (root / "report.md").write_text(text)
  summary = {f"{k[0]}_{k[1]}_{k[2]}": {
      "macro_f1": v["macro_f1"], "macro_f1_std": v["macro_f1_std"], "spread": v["spread"],
      "val_macro_f1": v["val_f1"], "uar": v["uar"], "ci": list(v["ci"]),
      "pooled_macro_f1": v["pooled_macro_f1"], "n_seeds": v["n_seeds"],
      "split_seeds": sorted(v["splits"]), "per_class_f1": v["per_class_f1"],
      **({"folds": v["folds"], "expected_folds": v["expected_folds"],
          "complete": v["complete"]} if v["loso"] else {})} for k, v in cells.items()}
  chosen = {me: {p: {"model": k[0], "val_macro_f1": cells[k]["val_f1"],
                     "test_macro_f1": cells[k]["macro_f1"]}
                 for (me2, p), k in best.items() if me2 == me and k} for me in methods}
  (root / "study.json").write_text(json.dumps(report.jsonable(
      {"complete": complete, "missing_cells": missing, "selection": CHOICE, "best": chosen,
       "m1_m2": heads,
       "test_selected": {"best": {me: {p: by_test[(me, p)][0] for p in phases
                                       if by_test[(me, p)]} for me in methods},
                         "m1_m2": test_diff},
       "cells": summary, "paired_methods": pairs, "paired_m1_m2": paired_m1_m2(pairs)}),
      indent=1, default=float, allow_nan=False))
  return text


def figures(root: pathlib.Path, cells: dict, models: list[str], best: dict, overall: dict):
  """Fig. 2 (the validation-chosen model per phase and method, test macro-F1 with its CI),
  Fig. 3 (every model across phases), Fig. 4 (confusion of the validation-best cell)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  # Fig. 2: only the phases and methods run (no empty slots).
  phases = [p for p in PHASES if any(k[2] == p for k in cells)]
  methods = [me for me in METHODS if any(k[1] == me for k in cells)]
  fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.45 * len(phases) * len(methods)), 3.6),
                         dpi=120)
  x = np.arange(len(phases))
  width = 0.8 / len(methods)
  for i, method in enumerate(methods):
    xs, ys, err = [], [], [[], []]
    for j, p in enumerate(phases):
      key = best.get((method, p))
      if key is None:
        continue
      f1 = cells[key]["macro_f1"]
      lo, hi = cells[key]["ci"]
      xs.append(x[j] + (i - (len(methods) - 1) / 2) * width)
      ys.append(f1)
      err[0].append(max(0.0, f1 - lo) if lo == lo else 0.0)  # lo == lo: not NaN
      err[1].append(max(0.0, hi - f1) if hi == hi else 0.0)
    ax.bar(xs, ys, width, yerr=err, capsize=3, label=method.upper(),
           error_kw={"elinewidth": 1})
  ax.set_xticks(x, [p.upper() for p in phases])
  ax.set_ylabel("test macro-F1 (95 % CI)")
  ax.set_title("Preprocessing comparison (model chosen on validation)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(root / "fig2_preprocessing.png")
  plt.close(fig)
  # Fig. 3: temporal trajectories per architecture, one panel per method.
  fig, axes = plt.subplots(1, len(methods), figsize=(1 + 4 * len(methods), 3.6), dpi=120,
                           sharey=True, squeeze=False)
  for ax, method in zip(axes[0], methods):
    for m in models:
      ys = [cells[(m, method, p)]["macro_f1"] if (m, method, p) in cells else np.nan
            for p in phases]
      ax.plot([p.upper() for p in phases], ys, marker="o", label=m)
    ax.set_title(method.upper())
    ax.set_ylabel("test macro-F1")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(root / "fig3_temporal.png")
  plt.close(fig)
  # Fig. 4: confusion of the best cell overall by validation, summed over its seeds.
  if overall:
    key = best_key(cells, list(overall.values()))
    n = cells[key]["n_units"]
    report.plot_confusion(cells[key]["confusion"], root / "fig4_confusion.png",
                              title=f"{key[0]} {key[1].upper()} {key[2].upper()} (test"
                                    + (f", {n} runs summed)" if n > 1 else ")"))
