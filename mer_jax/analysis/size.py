"""The paper's size question: how the M1 − M2 (M2A, M3) difference moves with the number of
training videos (`python -m mer_jax.study --train_fractions 0.25,0.5,1`).

Each fraction is a whole study in WORKDIR/train_fraction<F> (data.train_fraction=F: a
stratified subsample of the training videos drawn by the run's seed, validation and test
unchanged), with its own report. `report(root)` reads them back and, per fraction, model
and phase, gives M1 − X for every other method X run, paired on the same test videos
(compare.paired_difference: the paired bootstrap, over subjects under LOSO), against the
mean number of training videos of the two cells' runs (metrics.json's `train_videos`);
it writes size_report.md, size.json and fig_size.png at the root. With
`--datasets casme2,megc2019,casme3 --train_fractions ...` each dataset's fractions lie in
WORKDIR/<dataset>/train_fraction<F> and the root's report has one table and one row of
panels per dataset.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from mer_jax import metrics
from mer_jax.analysis.compare import paired_difference
from mer_jax.analysis.runs import METHODS, gather, summarise_cells
from mer_jax.plumbing.errors import NotFound
from mer_jax.run.report import jsonable

PREFIX = "train_fraction"


def fraction_dir(root: pathlib.Path, fraction: float) -> pathlib.Path:
  """The study folder of one data.train_fraction (train_fraction0.25, train_fraction1)."""
  return root / f"{PREFIX}{fraction:g}"


def fractions_of(root: pathlib.Path) -> list[float]:
  """The fractions whose study folders a root holds, ascending."""
  return sorted(float(d.name[len(PREFIX):]) for d in root.glob(f"{PREFIX}*") if d.is_dir())


def _train_videos(runs: list[dict], key: tuple) -> float:
  n = [r["train_videos"] for r in runs if (r["model"], r["method"], r["phase"]) == key
       and r["train_videos"] is not None]
  return float(np.mean(n)) if n else float("nan")


def studies(root: pathlib.Path) -> list[pathlib.Path]:
  """The --train_fractions studies under root: root itself, or each ROOT/<dataset> of
  `study --datasets a,b --train_fractions ...` (one size study per dataset)."""
  if fractions_of(root):
    return [root]
  return [d for d in sorted(root.iterdir()) if d.is_dir() and fractions_of(d)]


def differences(root: pathlib.Path) -> list[dict]:
  """Per study (its data: run.sources.data_name), fraction, model, phase and method
  X != M1: M1 − X test macro-F1 (paired) against the number of training videos (the mean
  over the pair's runs)."""
  rows = []
  for study, fraction in ((s, f) for s in studies(root) for f in fractions_of(s)):
    runs = gather(fraction_dir(study, fraction))
    data = ",".join(sorted({r["data_name"] for r in runs}))
    cells = summarise_cells(runs, n_resamples=1)   # the pairs' intervals are their own
    for (model, method, phase), cell in sorted(cells.items()):
      if method == "m1":
        continue
      m1 = cells.get((model, "m1", phase))
      d = paired_difference(m1, cell) if m1 else None
      if d is None:
        continue
      n = np.mean([_train_videos(runs, (model, me, phase)) for me in ("m1", method)])
      rows.append({"data": data, "fraction": fraction, "train_videos": float(n),
                   "model": model,
                   "phase": phase, "a": "m1", "b": method, "f1_a": m1["macro_f1"],
                   "f1_b": cell["macro_f1"], **d})
  return rows


def _figure(root: pathlib.Path, rows: list[dict]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  datas = list(dict.fromkeys(r["data"] for r in rows))
  phases = sorted({r["phase"] for r in rows})
  fig, axes = plt.subplots(len(datas), len(phases), dpi=120, sharey=True, squeeze=False,
                           figsize=(1 + 4 * len(phases), 0.4 + 3.2 * len(datas)))
  for (data, phase), ax in zip(((d, p) for d in datas for p in phases), axes.flat):
    panel = [r for r in rows if (r["data"], r["phase"]) == (data, phase)]
    lines = sorted({(r["model"], r["b"]) for r in panel},
                   key=lambda k: (k[0], METHODS.index(k[1])))
    for model, b in lines:
      pts = sorted((r["train_videos"], r["diff"], r["ci"]) for r in panel
                   if (r["model"], r["b"]) == (model, b))
      x, y = [p[0] for p in pts], [p[1] for p in pts]
      err = [[max(0.0, p[1] - p[2][0]) for p in pts], [max(0.0, p[2][1] - p[1]) for p in pts]]
      ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{model}: M1 − {b.upper()}")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_title(f"{data} {phase.upper()}")
    ax.set_xlabel("training videos")
    if lines:
      ax.legend(fontsize=7)
  for row in axes:
    row[0].set_ylabel("test macro-F1 difference (95 % CI)")
  fig.tight_layout()
  fig.savefig(root / "fig_size.png")
  plt.close(fig)


def report(root: pathlib.Path) -> str:
  """size_report.md, size.json and fig_size.png of a --train_fractions study; returns the
  markdown. Each fraction's own report is its folder's report.md."""
  rows = differences(root)
  if not rows:
    raise NotFound(f"No paired M1 runs under {root}/{PREFIX}*: run the study with "
                   "--train_fractions and at least M1 and one other method.")
  lines = ["# Preprocessing against training-set size", "",
           "M1 − X test macro-F1 on the same test videos, for each fraction of the training "
           "videos (data.train_fraction: stratified by emotion, drawn by the run's seed, so "
           "both methods of a pair train on the same videos; validation and test unchanged). "
           "95 % CI and p: paired bootstrap (compare.paired_difference; LOSO resamples "
           "subjects). A positive difference means the face-aware method (or the flow) still "
           "hurts at that size. One table (and one row of the figure) per dataset. Each "
           "fraction's full report: "
           + ", ".join(f"[{fraction_dir(s, f).relative_to(root)}]"
                       f"({fraction_dir(s, f).relative_to(root)}/report.md)"
                       for s in studies(root) for f in fractions_of(s)) + ".", ""]
  for data in dict.fromkeys(r["data"] for r in rows):
    lines += [f"## {data}", "",
              "| fraction | training videos | model | phase | pair | M1 | X | M1 − X | "
              "95 % CI | p |", "|---:|---:|---|---|---|---:|---:|---:|---|---:|"]
    lines += [f"| {r['fraction']:g} | {r['train_videos']:.1f} | {r['model']} | "
              f"{r['phase'].upper()} | M1 − {r['b'].upper()} | {r['f1_a']:.4f} | "
              f"{r['f1_b']:.4f} | {r['diff']:.4f} | [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | "
              f"{metrics.format_p(r['p_value'], r['n_resamples'])} |"
              for r in rows if r["data"] == data] + [""]
  lines += ["![size](fig_size.png)", ""]
  _figure(root, rows)
  text = "\n".join(lines)
  (root / "size_report.md").write_text(text)
  (root / "size.json").write_text(json.dumps(jsonable({"differences": rows}), indent=1))
  return text
