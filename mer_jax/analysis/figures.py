"""The study's figures: Fig. 2 (preprocessing, the validation-chosen model), Fig. 3 (temporal
phases per model), Fig. 4 (confusion of the validation-best cell)."""
from __future__ import annotations

import pathlib

import numpy as np

from mer_jax.analysis.compare import best_key
from mer_jax.analysis.runs import METHODS, PHASES
from mer_jax.run.report import plot_confusion


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
    plot_confusion(cells[key]["confusion"], root / "fig4_confusion.png",
                              title=f"{key[0]} {key[1].upper()} {key[2].upper()} (test"
                                    + (f", {n} runs summed)" if n > 1 else ")"),
                              classes=cells[key]["classes"])


def factorial_figure(root: pathlib.Path, cubes: dict) -> None:
  """fig_factorial.png: each cube's eight cells (test macro-F1, 95 % CI), one panel per
  (model, phase), grouped by crop x colour with size 224 and 384 side by side."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(cubes), figsize=(0.5 + 4.2 * len(cubes), 3.6), dpi=120,
                           sharey=True, squeeze=False)
  for ax, ((model, phase), r) in zip(axes[0], cubes.items()):
    groups = sorted({(c["crop"], c["colour"]) for c in r["cells"]},
                    key=lambda g: (g[0] != "frame", g[1] != "rgb"))
    for j, size in enumerate(sorted({c["size"] for c in r["cells"]})):
      cs = [next(c for c in r["cells"] if (c["crop"], c["colour"], c["size"]) == (*g, size))
            for g in groups]
      ys = np.array([c["macro_f1"] for c in cs])
      lo, hi = np.array([c["ci"] for c in cs], np.float64).T
      err = [np.nan_to_num(np.maximum(0, ys - lo)), np.nan_to_num(np.maximum(0, hi - ys))]
      ax.errorbar(np.arange(len(groups)) + (j - 0.5) * 0.3, ys, yerr=err, fmt="o",
                  capsize=3, label=f"{size} px")
    for c, name in ((r["cells"][-1], "M1"), (r["cells"][0], "M2")):
      g = groups.index((c["crop"], c["colour"]))
      ax.annotate(name, (g + (0.15 if c["size"] == max(x["size"] for x in r["cells"])
                              else -0.15), c["macro_f1"]), textcoords="offset points",
                  xytext=(6, 0), fontsize=7)
    ax.set_xticks(range(len(groups)), [f"{a}\n{b}" for a, b in groups])
    ax.set_title(f"{model} {phase.upper()}")
    ax.set_ylabel("test macro-F1 (95 % CI)")
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(root / "fig_factorial.png")
  plt.close(fig)
