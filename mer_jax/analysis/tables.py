"""The study's report: report.md and study.json from its finished runs, with the figures.

`report(root)` reads every finished run under a study root (mer_jax.analysis.runs),
chooses on validation and pairs methods (mer_jax.analysis.compare), writes Tables
I, III-V and the paired tests (methods; temporal heads against their backbone's
frame vote) as report.md, the same numbers as study.json, and
the figures (mer_jax.analysis.figures). A study's report can be remade from its
run directories (`python -m mer_jax.study --report_only`). A report of an
unfinished plan, or of a LOSO cell with missing folds, says so at the top; the
paper's choice by test score is a separate table labelled optimistic.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from mer_jax import metrics
from mer_jax.analysis.compare import (CHOICE, PAIRED_RESAMPLES, best_key, pair_model,
                                      paired_difference, paired_m1_m2, paired_methods,
                                      paired_temporal)
from mer_jax.analysis import factorial, leak
from mer_jax.analysis.figures import factorial_figure, figures
from mer_jax.analysis.looking import section as looking_section
from mer_jax.analysis.runs import (METHODS, PAPER_METHODS, PHASES, cell_coordinates, gather,
                                   read_plan, summarise_cells)
from mer_jax.data.labels import EMOTIONS
from mer_jax.plumbing.errors import NotFound
from mer_jax.run.report import jsonable


def _fmt(x, d=4):
  return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{d}f}"


# --- Table I -------------------------------------------------------------------


def table_one(runs: list[dict]) -> list[str]:
  """Table I from the quality.json of the builds the runs trained on (metrics.json's
  `dataset`), so it describes their data and no other build of the same name; one row per
  dataset and method when the runs read several datasets (a composite, cross-dataset)."""
  from mer_jax.data import build
  built = {}
  for r in runs:
    if r["dataset"]:
      for name, rec in r["dataset"].get("builds", {"": r["dataset"]}).items():
        built[(name or rec.get("dataset", "casme2"), r["method"], r["phase"])] = rec["dir"]
  names = sorted({k[0] for k in built})
  several = len(names) > 1
  lines = [("| dataset " if several else "") + "| method | resolution | colour | face-centring "
           "rate | information density | training samples AF / KFS / MFS |",
           ("|---" if several else "") + "|---|---|---|---:|---:|---|"]
  for name in names:
    for method in METHODS:
      qs = {}
      for phase in PHASES:
        d = built.get((name, method, phase))
        if d is not None and pathlib.Path(d).exists():
          qs[phase] = build.read_quality(d)
      if not qs:
        continue
      q = qs.get("mfs") or next(iter(qs.values()))
      h, w, c = q["image_shape"]
      samples = " / ".join(str(qs[p]["splits"]["train"]["frames"]) if p in qs else "—"
                           for p in PHASES)
      colour = {"m3": "flow (u, v, magnitude)"}.get(method, "RGB" if c == 3 else "grayscale")
      if colour == "RGB" and q.get("source_colour") == "gray":
        colour = "grayscale in 3 channels (the source has no colour)"
      lines.append(("| " + name + " " if several else "") +
                   f"| {method.upper()} | {h}x{w} | {colour} | "
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


def temporal_table(pairs: list[dict], loso: bool) -> list[str]:
  """The report's section of `paired_temporal`'s rows: temporal head vs frame voting."""
  lines = ["## Temporal head vs frame voting on the same test videos (paired bootstrap)", "",
           "Each temporal head (BACKBONE+HEAD: the backbone's frame embeddings through a GRU "
           "or their mean, one prediction per video; +frozen: on frozen backbone features) "
           "against the same backbone's frames voting, per method, phase and seed: A − B of "
           "test macro-F1 on the same test videos (matched by video id), paired bootstrap "
           f"95 % CI and add-one p ({PAIRED_RESAMPLES:,} resamples"
           + (", resampling subjects" if loso else ", within classes") + f"); p (Holm) "
           f"adjusts for the {len(pairs)} comparison(s) in this table.", "",
           "| A (temporal head) | B (frame vote) | method | phase | split seed | seed | "
           "A macro-F1 | B macro-F1 | A − B | 95 % CI | p | p (Holm) |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
  for r in pairs:
    lines.append(f"| {r['model']} | {r['vote']} | {r['method'].upper()} | "
                 f"{r['phase'].upper()} | {r['split_seed']} | {r['seed']} | {_fmt(r['f1_a'])} | "
                 f"{_fmt(r['f1_b'])} | {_fmt(r['diff'])} | {_ci(r['ci'])} | "
                 f"{metrics.format_p(r['p_value'], r['n_resamples'])} | "
                 f"{metrics.format_p(r['p_holm'], r['n_resamples'])} |")
  return lines + [""]


def protocol_text(runs: list[dict], loso: bool) -> str:
  """The report's one-line protocol: LOSO, cross-dataset (trained and validated on one
  dataset, tested on another) or the holdout split, with the data it ran on."""
  names = sorted({r["data_name"] for r in runs})
  on = "" if names == ["casme2"] else f" on {', '.join(names)}"
  if loso:
    return f"leave-one-subject-out (predictions pooled over folds: UF1/UAR){on}"
  if all("→" in n for n in names):
    return (f"cross-dataset {', '.join(names)}: trained and validated on the left, tested "
            "on the right")
  by = ("by subject" if runs[0]["split"] == "subject"
        else "by video (the paper split when split seed 0)")
  return f"holdout split at the paper's 201/26/28 proportions, {by}{on}"


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
  protocol = protocol_text(runs, loso)
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
  classes = next((cells[k]["classes"] for k in overall.values()), EMOTIONS)
  lines += ["## Table V: per-class test F1 of the best models (chosen on validation over "
            "models and phases; averaged over seeds; — = class absent from the test set)",
            "", "| model | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
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

  temporal_pairs = paired_temporal(cells)
  if temporal_pairs:
    lines += temporal_table(temporal_pairs, loso)

  if split_seeds != [0]:
    lines += ["## Split variance", "",
              f"Each cell on {len(split_seeds)} split seeds (split seed 0 is "
              + ("the first subject-independent split" if runs[0]["split"] == "subject" else
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
    several = {k: v for k, v in cells.items() if len(v["per_dataset"]) > 1}
    if several:
      lines += ["### Per source dataset (the MEGC convention)", "",
                "| model | method | phase | dataset | subjects | videos | UF1 | "
                "95 % CI (subjects) | UAR |", "|---|---|---|---|---:|---:|---:|---|---:|"]
      for k, v in several.items():
        for d, r in v["per_dataset"].items():
          lines.append(f"| {k[0]} | {k[1].upper()} | {k[2].upper()} | {d} | {r['subjects']} | "
                       f"{r['videos']} | {_fmt(r['uf1'])} | {_ci(r['ci'])} | {_fmt(r['uar'])} |")
      lines += [""]

  leaky = leak.leaky_units(runs)
  lines += leak.section(leaky)

  cube = factorial.factorial(cells, PAIRED_RESAMPLES)
  lines += factorial.section(cube)
  if cube["cubes"]:
    factorial_figure(root, cube["cubes"])

  looking, looked = looking_section(root, n_resamples)
  lines += looking
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
          "complete": v["complete"], "per_dataset": v["per_dataset"]} if v["loso"] else {})}
      for k, v in cells.items()}
  chosen = {me: {p: {"model": k[0], "val_macro_f1": cells[k]["val_f1"],
                     "test_macro_f1": cells[k]["macro_f1"]}
                 for (me2, p), k in best.items() if me2 == me and k} for me in methods}
  (root / "study.json").write_text(json.dumps(jsonable(
      {"complete": complete, "missing_cells": missing, "selection": CHOICE, "best": chosen,
       "m1_m2": heads,
       "test_selected": {"best": {me: {p: by_test[(me, p)][0] for p in phases
                                       if by_test[(me, p)]} for me in methods},
                         "m1_m2": test_diff},
       "cells": summary, "paired_methods": pairs, "paired_m1_m2": paired_m1_m2(pairs),
       "factorial": factorial.as_json(cube), "paired_temporal": temporal_pairs,
       "where_models_look": looked, **({leak.KEY: leaky} if leaky else {})}),
      indent=1, default=float, allow_nan=False))
  return text
