"""The study's report from its finished runs: gathered, summarised, paired, tabled, drawn.

`report(root)` reads every WORKDIR/<model>_<method>_<phase>/seed<S>[/fold<K>]
run (metrics.json, predictions_test.csv) and writes report.md, study.json and
the figures (mer_jax.study's docstring lists them). It reads what the runs
wrote (and, for Table I, the built datasets' quality.json), so a study's
report can be remade from its run directories (`python -m mer_jax.study
--report_only`).
"""
from __future__ import annotations

import csv
import itertools
import json
import pathlib

import numpy as np

from mer_jax import metrics
from mer_jax import report as run_report
from mer_jax.data.casme2 import EMOTIONS
from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method

METHODS = Method.names()                                   # m1, m2, m2a, m3
PAPER_METHODS = tuple(m.value for m in (Method.M1, Method.M2))  # the paper's two
PHASES = tuple(p.value for p in Phase)
K = len(EMOTIONS)


# --- gathering -----------------------------------------------------------------


def _read_predictions(path: pathlib.Path):
  with open(path) as f:
    rows = list(csv.DictReader(f))
  ids = np.array([r["video_id"] for r in rows])
  y = np.array([EMOTIONS.index(r["label"]) for r in rows])
  p = np.array([EMOTIONS.index(r["pred"]) for r in rows])
  return ids, y, p


def gather(root: pathlib.Path) -> list[dict]:
  """One record per finished run: cell coordinates, metrics, test predictions."""
  out = []
  for mfile in sorted(root.glob("*/seed*/metrics.json")) + \
      sorted(root.glob("*/seed*/fold*/metrics.json")):
    w = mfile.parent
    m = json.loads(mfile.read_text())
    c = m["config"]
    ids, y, p = _read_predictions(w / "predictions_test.csv")
    out.append({"model": c["model"]["name"], "method": c["data"]["method"],
                "phase": c["data"]["phase"], "seed": c["seed"],
                "fold": c["data"].get("fold", -1) if c["data"].get("protocol") == "loso" else -1,
                "protocol": c["data"].get("protocol", "paper"), "metrics": m,
                "video_ids": ids, "y": y, "pred": p, "workdir": str(w)})
  return out


def _fmt(x, d=4):
  return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{d}f}"


def summarise_cells(runs: list[dict], n_resamples: int = 1000) -> dict:
  """(model, method, phase) -> test figures over seeds (paper) or pooled over folds (LOSO)."""
  groups = {}
  for r in runs:
    groups.setdefault((r["model"], r["method"], r["phase"]), []).append(r)
  out = {}
  for key, rs in sorted(groups.items()):
    loso = rs[0]["protocol"] == "loso"
    if loso:
      by_seed = {}
      for r in rs:
        by_seed.setdefault(r["seed"], []).append(r)
      seeds = {}
      for s, fr in by_seed.items():
        y = np.concatenate([r["y"] for r in fr])
        p = np.concatenate([r["pred"] for r in fr])
        rep = metrics.classification_report(y, p, K)
        per_fold = [r["metrics"]["test"]["macro_f1"] for r in fr]
        seeds[s] = {"macro_f1": rep["macro_f1"], "uar": rep["uar"], "y": y, "pred": p,
                    "per_class_f1": rep["per_class_f1"], "confusion": rep["confusion"],
                    "ci": metrics.bootstrap_ci(y, p, K, n_resamples=n_resamples),
                    "folds": len(fr), "fold_mean": metrics.mean_std(per_fold)[0],
                    "fold_std": metrics.mean_std(per_fold)[1]}
    else:
      seeds = {}
      for r in rs:
        t = r["metrics"]["test"]
        seeds[r["seed"]] = {"macro_f1": t["macro_f1"], "uar": t["uar"],
                            "ci": tuple(t["macro_f1_ci"]), "per_class_f1": t["per_class_f1"],
                            "confusion": t.get("confusion"), "y": r["y"], "pred": r["pred"],
                            "video_ids": r["video_ids"]}
    f1s = [v["macro_f1"] for v in seeds.values()]
    uars = [v["uar"] for v in seeds.values()]
    mean, std = metrics.mean_std(f1s)
    first = seeds[min(seeds)]
    out[key] = {"seeds": seeds, "macro_f1": mean, "macro_f1_std": std,
                "uar": metrics.mean_std(uars)[0], "ci": first["ci"], "n_seeds": len(seeds),
                "loso": loso, "per_class_f1": first["per_class_f1"],
                "confusion": first["confusion"]}
  return out


def _on_same_videos(sa: dict, sb: dict):
  """(labels, predictions a, predictions b) of two runs on the same test videos, or None."""
  if "video_ids" in sa:  # align by video id (same split, so the same set)
    order_a, order_b = np.argsort(sa["video_ids"]), np.argsort(sb["video_ids"])
    if not np.array_equal(sa["video_ids"][order_a], sb["video_ids"][order_b]):
      return None
    return sa["y"][order_a], sa["pred"][order_a], sb["pred"][order_b]
  if len(sa["y"]) != len(sb["y"]) or not np.array_equal(sa["y"], sb["y"]):
    return None
  return sa["y"], sa["pred"], sb["pred"]


def paired_methods(cells: dict, n_resamples: int = 10000) -> list[dict]:
  """Method a - method b test macro-F1 for every pair of methods present (a before b in
  METHODS), per (model, phase, seed), on the same test videos (paired bootstrap)."""
  rows = []
  models = sorted({k[0] for k in cells})
  methods = [m for m in METHODS if any(k[1] == m for k in cells)]
  for model, phase in itertools.product(models, PHASES):
    for ma, mb in itertools.combinations(methods, 2):
      a, b = cells.get((model, ma, phase)), cells.get((model, mb, phase))
      if not a or not b:
        continue
      for seed in sorted(set(a["seeds"]) & set(b["seeds"])):
        sa, sb = a["seeds"][seed], b["seeds"][seed]
        same = _on_same_videos(sa, sb)
        if same is None:
          continue
        r = metrics.paired_bootstrap(*same, K, n_resamples=n_resamples, seed=seed)
        rows.append({"model": model, "phase": phase, "seed": seed, "a": ma, "b": mb,
                     "f1_a": sa["macro_f1"], "f1_b": sb["macro_f1"], "diff": r["diff"],
                     "ci": r["ci"], "p_value": r["p_value"]})
  return rows


def paired_m1_m2(cells: dict, n_resamples: int = 10000, pairs: list | None = None) -> list[dict]:
  """The paper's pair of `paired_methods`: M1 - M2 per (model, phase, seed)."""
  pairs = paired_methods(cells, n_resamples) if pairs is None else pairs
  return [{"model": r["model"], "phase": r["phase"], "seed": r["seed"], "m1": r["f1_a"],
           "m2": r["f1_b"], "diff": r["diff"], "ci": r["ci"], "p_value": r["p_value"]}
          for r in pairs if (r["a"], r["b"]) == ("m1", "m2")]


# --- Table I -------------------------------------------------------------------


def table_one(runs: list[dict]) -> list[str]:
  """Table I from the quality.json of the builds the runs trained on (metrics.json's
  `dataset`), so it describes their data and no other build of the same name."""
  from mer_jax.data import build
  built = {(r["method"], r["phase"]): r["metrics"]["dataset"]["dir"] for r in runs
           if r["metrics"].get("dataset")}
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
  if v["n_seeds"] > 1:
    s += f" ± {v['macro_f1_std']:.4f}"
  lo, hi = v["ci"]
  return s + f" [{_fmt(lo, 3)}, {_fmt(hi, 3)}]"


def report(root: pathlib.Path, n_resamples: int = 1000) -> str:
  runs = gather(root)
  if not runs:
    raise FileNotFoundError(f"No finished runs under {root} (no */seed*/metrics.json).")
  cells = summarise_cells(runs, n_resamples)
  models = sorted({k[0] for k in cells})
  loso = any(v["loso"] for v in cells.values())
  seeds = sorted({s for v in cells.values() for s in v["seeds"]})
  lines = [f"# Study report ({root.name})", "",
           f"{len(runs)} runs: models {', '.join(models)}; seeds {seeds}; protocol "
           f"{'leave-one-subject-out (predictions pooled over folds: UF1/UAR)' if loso else 'paper split 201/26/28'}.",
           "Test macro-F1 at the video level; ± = standard deviation over seeds; [low, high] = "
           "95 % bootstrap CI of the first seed.", ""]
  lines += ["## Table I: dataset and methodology", ""] + table_one(runs) + [""]

  methods = [me for me in METHODS if any(k[1] == me for k in cells)]
  paper_pair = all(me in methods for me in PAPER_METHODS)
  lines += ["## Table III: best model per phase, M1 vs M2" + (
      "" if methods == list(PAPER_METHODS) else " (and every method run)"), "",
            "| phase | " + " | ".join(f"{me.upper()} best model | {me.upper()} macro-F1"
                                     for me in methods)
            + (" | M1 − M2 |" if paper_pair else " |"),
            "|---|" + "---|---|" * len(methods) + ("---:|" if paper_pair else "")]
  best = {}
  for phase in PHASES:
    if not any(k[2] == phase for k in cells):
      continue
    row = [phase.upper()]
    vals = {}
    for method in methods:
      cand = [(cells[(m, method, phase)]["macro_f1"], m) for m in models
              if (m, method, phase) in cells]
      if not cand:
        row += ["—", "—"]
        continue
      f1, m = max(cand)
      best[(method, phase)] = m
      vals[method] = f1
      row += [m, _f1_cell(cells[(m, method, phase)])]
    if paper_pair:
      row.append(_fmt(vals["m1"] - vals["m2"]) if "m1" in vals and "m2" in vals else "—")
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

  lines += ["## Table V: per-class F1 of the best models (— = class absent from the test set)",
            "", "| model | " + " | ".join(EMOTIONS) + " |", "|---|" + "---:|" * K]
  overall = {}
  for method in METHODS:
    cand = [(v["macro_f1"], k) for k, v in cells.items() if k[1] == method]
    if cand:
      overall[method] = max(cand)[1]
  for method, key in overall.items():
    v = cells[key]
    lines.append(f"| {key[0]} {method.upper()} {key[2].upper()} | " +
                 " | ".join(_fmt(x, 3) for x in v["per_class_f1"]) + " |")
  lines += [""]

  pairs = paired_methods(cells)
  paired = paired_m1_m2(cells, pairs=pairs)
  if pairs:
    lines += ["## Method pairs on the same test videos (paired bootstrap)", "",
              "The paper reports the paradox (M1 vs M2) without a test; here every pair of "
              "methods run has, per model, phase and seed, the difference A − B of test "
              "macro-F1 with a paired bootstrap 95 % CI and two-sided p-value (10,000 "
              "resamples of the same test videos).", "",
              "| model | phase | seed | A | B | A macro-F1 | B macro-F1 | A − B | 95 % CI | p |",
              "|---|---|---:|---|---|---:|---:|---:|---|---:|"]
    for r in pairs:
      lines.append(f"| {r['model']} | {r['phase'].upper()} | {r['seed']} | {r['a'].upper()} | "
                   f"{r['b'].upper()} | {_fmt(r['f1_a'])} | {_fmt(r['f1_b'])} | "
                   f"{_fmt(r['diff'])} | [{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}] | "
                   f"{_fmt(r['p_value'], 3)} |")
    lines += [""]

  if loso:
    lines += ["## Leave-one-subject-out (UF1/UAR pooled over folds)", "",
              "| model | method | phase | folds | UF1 | UAR | per-fold macro-F1 mean ± sd |",
              "|---|---|---|---:|---:|---:|---|"]
    for k, v in cells.items():
      s = v["seeds"][min(v["seeds"])]
      lines.append(f"| {k[0]} | {k[1].upper()} | {k[2].upper()} | {s['folds']} | "
                   f"{_fmt(v['macro_f1'])} | {_fmt(v['uar'])} | {_fmt(s['fold_mean'])} ± "
                   f"{_fmt(s['fold_std'])} |")
    lines += ["", "Model selection (early stopping) used validation videos of the training "
              "subjects only; the held-out subject was never looked at before testing.", ""]

  lines += ["## Figures", "", "![Fig. 2](fig2_preprocessing.png)",
            "![Fig. 3](fig3_temporal.png)", "![Fig. 4](fig4_confusion.png)", ""]
  figures(root, cells, models, overall)
  text = "\n".join(lines)
  (root / "report.md").write_text(text)
  summary = {f"{k[0]}_{k[1]}_{k[2]}": {"macro_f1": v["macro_f1"], "macro_f1_std": v["macro_f1_std"],
                                       "uar": v["uar"], "ci": list(v["ci"]),
                                       "n_seeds": v["n_seeds"]}
             for k, v in cells.items()}
  (root / "study.json").write_text(json.dumps(
      {"cells": summary, "paired_methods": pairs, "paired_m1_m2": paired}, indent=1,
      default=float))
  return text


def figures(root: pathlib.Path, cells: dict, models: list[str], overall: dict):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  # Fig. 2: best macro-F1 per phase and method, with its 95 % bootstrap CI;
  # only the phases and methods run (no empty slots).
  phases = [p for p in PHASES if any(k[2] == p for k in cells)]
  methods = [me for me in METHODS if any(k[1] == me for k in cells)]
  fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.45 * len(phases) * len(methods)), 3.6),
                         dpi=120)
  x = np.arange(len(phases))
  width = 0.8 / len(methods)
  for i, method in enumerate(methods):
    xs, ys, err = [], [], [[], []]
    for j, p in enumerate(phases):
      cand = [(cells[(m, method, p)]["macro_f1"], m) for m in models if (m, method, p) in cells]
      if not cand:
        continue
      f1, m = max(cand)
      lo, hi = cells[(m, method, p)]["ci"]
      xs.append(x[j] + (i - (len(methods) - 1) / 2) * width)
      ys.append(f1)
      err[0].append(max(0.0, f1 - lo) if lo == lo else 0.0)  # lo == lo: not NaN
      err[1].append(max(0.0, hi - f1) if hi == hi else 0.0)
    ax.bar(xs, ys, width, yerr=err, capsize=3, label=method.upper(),
           error_kw={"elinewidth": 1})
  ax.set_xticks(x, [p.upper() for p in phases])
  ax.set_ylabel("test macro-F1, best model (95 % CI)")
  ax.set_title("Preprocessing comparison")
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
  # Fig. 4: confusion of the best model overall.
  if overall:
    key = max(overall.values(), key=lambda k: cells[k]["macro_f1"])
    conf = cells[key]["confusion"]
    if conf is None:
      s = cells[key]["seeds"][min(cells[key]["seeds"])]
      conf = metrics.confusion_matrix(s["y"], s["pred"], K)
    run_report.plot_confusion(conf, root / "fig4_confusion.png",
                            title=f"{key[0]} {key[1].upper()} {key[2].upper()} (test)")
