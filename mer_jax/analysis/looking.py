"""Where the models look: the study report's section from each explained run's files.

Reads RUN/explain/explain.json of every finished run of a study that has one
(`python -m mer_jax.study ... --explain` writes it for the validation-chosen
model of each method and phase; `python -m mer_jax.explain --workdir RUN` for
any run), test split only. Per run, attribution method and class:

- face mass (share of the positive attribution inside the face box) beside its
  chance level (the box's share of the image), as the mean over test videos
  of each video's frame mean, with a 95 % interval of mass - chance;
- region masses (eyes/brows, nose, mouth, each beside its area share) for the
  face-crop methods, where the box fills the image and face mass says little;
- the deletion AUC against random removal, and an interval of their
  difference.

Intervals resample test videos within their class (mer_jax.metrics' stratified
bootstrap; `bootstrap_mean` for masses, `bootstrap_macro_f1` for every point of
both deletion curves on the same resamples). Everything is recomputed from
explain.json's per-video numbers and voted predictions, so the section is
remade with the rest of the report (`--report_only`).

The rule (VERDICT) for whether a model uses the face, the background or both
is stated in the report; a verdict only counts where the maps are faithful
(deletion hurts the model faster than random removal, interval below 0).
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from mer_jax import metrics
from mer_jax.analysis.compare import best_key
from mer_jax.analysis.runs import K, gather
from mer_jax.data.labels import EMOTIONS
from mer_jax.data.preprocess import Method

FACE_MAJORITY = 0.5
VERDICT = ("**Face, background or both** (per run and attribution method, from face mass m "
           "and its chance level c, the face box's share of the image): **face** when the "
           "95 % interval of m − c lies above 0 and m ≥ "
           f"{FACE_MAJORITY:.1f} (the face draws more than its area's share and most of the "
           "evidence); **both** when the interval lies above 0 but m < "
           f"{FACE_MAJORITY:.1f} (the face is favoured per pixel, yet most evidence lies "
           "outside it), or when the interval holds 0 (attribution spread like area); "
           "**background** when the interval lies below 0. A verdict counts only where the "
           "maps are faithful: the deletion AUC − random AUC interval lies below 0 (removing "
           "the most-attributed pixels hurts the model sooner than removing random ones).")
REGIONS = ("eyes_brows", "nose", "mouth")


def _arr(values) -> np.ndarray:
  return np.array([np.nan if v is None else v for v in values], np.float64)


def explained_runs(root: pathlib.Path) -> tuple[list[tuple[dict, dict]], list[str]]:
  """((gathered run record, its explain.json) for every finished run under root whose
  test split was explained, in gather's order; the runs whose explain.json lacks the
  per-video numbers (written before they were kept), to be explained again)."""
  out, stale = [], []
  for r in gather(root):
    f = pathlib.Path(r["workdir"]) / "explain" / "explain.json"
    if f.exists():
      e = json.loads(f.read_text())
      if e.get("split") != "test":
        continue
      if all("predictions" in a["deletion"] for a in e["attributions"].values()):
        out.append((r, e))
      else:
        stale.append(str(pathlib.Path(r["workdir"]).relative_to(root)))
  return out, stale


def runs_to_explain(root: pathlib.Path) -> list[pathlib.Path]:
  """One run per (method, phase): the model with the highest mean validation macro-F1
  (compare.best_key, the study's choice), its run of the lowest (split seed, seed).
  LOSO runs are left out (each fold tests one subject; the study's cost times the folds)."""
  runs = [r for r in gather(root) if r["protocol"] != "loso"]
  cells: dict = {}
  for r in runs:
    cells.setdefault((r["model"], r["method"], r["phase"]), []).append(r)
  scored = {k: {"val_f1": float(np.mean([r["val_f1"] for r in v]))} for k, v in cells.items()}
  out = []
  for me, p in sorted({(k[1], k[2]) for k in cells}):
    k = best_key(scored, [c for c in cells if c[1:] == (me, p)])
    if k:
      first = min(cells[k], key=lambda r: (r["split_seed"], r["seed"]))
      out.append(pathlib.Path(first["workdir"]))
  return out


def verdict(mass: float, diff_ci) -> str:
  """face | both | background from face mass and the interval of mass - chance (VERDICT)."""
  lo, hi = diff_ci
  if lo > 0:
    return "face" if mass >= FACE_MAJORITY else "both"
  return "background" if hi < 0 else "both"


def summarise(entry: dict, method: str, n_resamples: int = 1000, seed: int = 0) -> dict:
  """One attribution method of one explained run: masses with intervals, overall and per
  class, and the deletion AUCs with the interval of their difference."""
  d = entry["deletion"]
  y = np.asarray(d["video_labels"], np.int64)
  fr = np.asarray(d["fractions"], np.float64)
  preds = np.asarray(d["predictions"] + d["random_predictions"], np.int64)   # [2F, videos]
  f = len(fr)
  full = [metrics.macro_f1(y, p, K) for p in preds]
  boot = metrics.bootstrap_macro_f1(y, preds, K, n_resamples, seed)           # [B, 2F]
  auc, rauc = np.trapezoid(boot[:, :f], fr, axis=1), np.trapezoid(boot[:, f:], fr, axis=1)
  out = {"deletion": {"auc": float(np.trapezoid(full[:f], fr)),
                      "random_auc": float(np.trapezoid(full[f:], fr)),
                      "auc_ci": metrics.percentile_interval(auc),
                      "random_auc_ci": metrics.percentile_interval(rauc),
                      "diff_ci": metrics.percentile_interval(auc - rauc)}}
  out["deletion"]["diff"] = out["deletion"]["auc"] - out["deletion"]["random_auc"]
  out["deletion"]["faithful"] = out["deletion"]["diff_ci"][1] < 0
  pv = entry.get("per_video")
  if pv is None:              # no face boxes (frames not on the machine when explained)
    return out
  classes = [int(k) for k in np.unique(y)]
  names = ["face"] + ([r for r in REGIONS if r in pv] if Method.parse(method).crops_face
                      else [])
  for name in names:
    m = _arr(pv["face_mass" if name == "face" else name])
    c = _arr(pv["face_chance" if name == "face" else f"{name}_chance"])
    # columns: all videos, then each class's videos alone (nan elsewhere: left out)
    cols = [np.ones(len(y), bool)] + [y == k for k in classes]
    vals = np.stack([np.where(sel, v, np.nan) for sel in cols for v in (m, c, m - c)], 1)
    boot = metrics.bootstrap_mean(vals, y, K, n_resamples, seed).reshape(n_resamples, -1, 3)
    rows = {}
    for j, label in enumerate(["all"] + [EMOTIONS[k] for k in classes]):
      mm, cc, dd = (np.nanmean(v) if np.isfinite(v).any() else float("nan")
                    for v in vals[:, 3 * j:3 * j + 3].T)
      rows[label] = {"mass": float(mm), "chance": float(cc), "diff": float(dd),
                     "diff_ci": metrics.percentile_interval(boot[:, j, 2]),
                     "videos": int(np.isfinite(vals[:, 3 * j]).sum())}
    out[name] = rows
  if "face" in out and out["face"]["all"]["videos"]:
    out["verdict"] = verdict(out["face"]["all"]["mass"], out["face"]["all"]["diff_ci"])
  return out


def _f(x, d=3):
  return "—" if x is None or not np.isfinite(x) else f"{x:.{d}f}"


def _ci(ci, d=3):
  return f"[{_f(ci[0], d)}, {_f(ci[1], d)}]"


def section(root: pathlib.Path, n_resamples: int = 1000) -> tuple[list[str], dict]:
  """(report.md lines, study.json's dict) of "Where the models look"; no lines when no
  run of the study was explained."""
  found, stale = explained_runs(root)
  if not found and not stale:
    return [], {}
  summary, lines = {}, ["## Where the models look", ""] + (
      [f"**Left out:** {', '.join(stale)}: explained by an older version (no per-video "
       "numbers); delete its explain/ and rerun with --explain.", ""] if stale else []) + [
                        f"{len(found)} explained run(s) (test split; "
                        "`python -m mer_jax.study ... --explain` explains the "
                        "validation-chosen model of each method and phase, "
                        "`python -m mer_jax.explain --workdir RUN` any run). Masses are "
                        "means over test videos of each video's frame mean; intervals are 95 % "
                        f"stratified bootstraps over test videos ({n_resamples:,} resamples). "
                        "Deletion: video macro-F1 as the most-attributed pixels are replaced "
                        "by the image's mean, against the same share removed at random; a "
                        "lower AUC than random means the map points at what the model uses.",
                        "", VERDICT, ""]
  table = ["| run | attribution | face mass | chance | mass − chance [95 % CI] | eyes/brows "
           "(area) | nose (area) | mouth (area) | deletion AUC | random AUC | AUC − random "
           "[95 % CI] | verdict |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
  per_class = ["| run | attribution | class | videos | face mass | chance | mass − chance "
               "[95 % CI] |", "|---|---|---|---:|---:|---:|---|"]
  m1_says, figures = [], []
  for r, e in found:
    name = f"{r['model']} {r['method'].upper()} {r['phase'].upper()} seed {r['seed']}" + (
        f" split {r['split_seed']}" if r["split_seed"] else "")
    rel = pathlib.Path(r["workdir"]).relative_to(root)
    summary[str(rel)] = runs = {}
    for method, entry in e["attributions"].items():
      s = runs[method] = summarise(entry, r["method"], n_resamples)
      face, dl = s.get("face", {}).get("all"), s["deletion"]
      regions = [f"{_f(s[k]['all']['mass'])} ({_f(s[k]['all']['chance'])})" if k in s
                 else "—" for k in REGIONS]
      v = s.get("verdict")
      shown = "—" if v is None else (v if dl["faithful"] else f"({v}: maps not faithful)")
      table.append(f"| {name} | {method.replace('_', ' ')} | "
                   + (f"{_f(face['mass'])} | {_f(face['chance'])} | {_f(face['diff'])} "
                      f"{_ci(face['diff_ci'])}" if face else "— | — | —")
                   + f" | {' | '.join(regions)} | {_f(dl['auc'])} | {_f(dl['random_auc'])} | "
                   f"{_f(dl['diff'])} {_ci(dl['diff_ci'])} | {shown} |")
      for label, row in s.get("face", {}).items():
        if label != "all":
          per_class.append(f"| {name} | {method.replace('_', ' ')} | {label} | "
                           f"{row['videos']} | {_f(row['mass'])} | {_f(row['chance'])} | "
                           f"{_f(row['diff'])} {_ci(row['diff_ci'])} |")
      if r["method"] == "m1" and v is not None:
        m1_says.append((v, dl["faithful"], f"- {name}, {method.replace('_', ' ')}: **{v}** (face mass "
                       f"{_f(face['mass'])} vs chance {_f(face['chance'])}, difference "
                       f"{_ci(face['diff_ci'])}; deletion AUC {_f(dl['auc'])} vs random "
                       f"{_f(dl['random_auc'])}, "
                       + ("faithful)" if dl["faithful"] else
                          "maps not shown faithful, so the verdict does not count)")))
    if (pathlib.Path(r["workdir"]) / "explain" / "explain.png").exists():
      figures.append(f"![{name}: overlays of test videos per class]({rel}/explain/explain.png)")
  lines += ["### Does M1 use the face, the background, or both?", ""]
  if m1_says:
    counted = {v for v, faithful, _ in m1_says if faithful}
    lines += [ln for _, _, ln in m1_says] + ["", "In short: " + (
        f"M1's explained models use **{' and '.join(sorted(counted))}**" if len(counted) == 1
        else "the faithful maps disagree (" + ", ".join(sorted(counted)) + ")" if counted
        else "no M1 map passed the deletion check, so the numbers do not say") + "."]
  else:
    lines += ["No M1 run with face boxes was explained."]
  lines += ["", "### Masses and deletion, per run and attribution method", "",
            "Region masses (share of positive attribution, area share in brackets) for the "
            "face-crop methods only: in M1's frame the face is small and its regions are a "
            "few pixels.", ""] + table + [
            "", "### Face mass per class", ""] + per_class + [""]
  if figures:
    lines += ["### Overlays (the middle frame of a few test videos per class; green: the "
              "face box)", ""] + figures + [""]
  return lines, summary
