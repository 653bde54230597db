r"""The paper's grid in one command: every cell trained, then the paper's tables and figures.

  python -m mer_jax.study --grid paper --workdir runs/study [--seeds 0,1,2]
  python -m mer_jax.study --models poolformer_s12 --phases af,mfs --workdir runs/small \
      --set model.img_size=64 --set num_epochs=5
  python -m mer_jax.study --grid paper --protocol loso --workdir runs/loso
  python -m mer_jax.study --grid paper --methods m1,m2,m2a,m3 --workdir runs/study4
  python -m mer_jax.study --workdir runs/study --report_only

A cell is (model, method, phase, seed[, LOSO fold]); its run directory is
WORKDIR/<model>_<method>_<phase>/seed<S>[/fold<K>]. Cells with a metrics.json
are skipped, and a cell interrupted mid-training resumes from its checkpoint,
so rerunning the command continues an interrupted study. Under a SLURM array
(or with --task_index/--num_tasks) each task runs its share of the cells
(cell i goes to task i mod N); `--report_only` then gathers them. A cell
another process is training (its workdir lock is held) is left to it: the
other cells still run, and the command then exits 2 naming it.

Methods: the paper's M1 and M2 by default; `--methods m1,m2,m2a,m3` adds
the aligned faces (M2A) and the optical flow (M3) of mer_jax.data.preprocess.

WORKDIR/report.md holds Table I (dataset and methodology), Table III (best
model per phase and method, M1 vs M2 with 95 % bootstrap CIs), Table IV
(temporal evolution per model), Table V (per-class F1 of the best models),
the difference of every pair of methods per (model, phase, seed) with a
paired bootstrap CI and p-value on the same test videos, the mean and spread
over seeds, and for LOSO the UF1/UAR of the predictions pooled over all folds
(MEGC convention) with the per-fold spread. Figures: fig2_preprocessing.png
(best model per phase and method, 95 % CI error bars), fig3_temporal.png,
fig4_confusion.png.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import pathlib

import numpy as np

from mer_jax import cli
from mer_jax import configs as recipe
from mer_jax import metrics
from mer_jax import report as run_report
from mer_jax.data.casme2 import EMOTIONS
from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method
from mer_jax.workdir import WorkdirBusy

GRIDS = {"paper": ("vit_b32", "swin_b", "poolformer_m36", "poolformer_m48")}
METHODS = Method.names()                                   # m1, m2, m2a, m3
PAPER_METHODS = tuple(m.value for m in (Method.M1, Method.M2))  # the paper's two
PHASES = tuple(p.value for p in Phase)
K = len(EMOTIONS)


@dataclasses.dataclass(frozen=True)
class Cell:
  model: str
  method: str
  phase: str
  seed: int
  fold: int = -1                # LOSO fold; -1 = paper split

  @property
  def key(self) -> str:
    return f"{self.model}_{self.method}_{self.phase}"

  def workdir(self, root: pathlib.Path) -> pathlib.Path:
    d = root / self.key / f"seed{self.seed}"
    return d / f"fold{self.fold:02d}" if self.fold >= 0 else d


def parse_list(s: str, valid=None) -> list[str]:
  items = [x.strip() for x in s.split(",") if x.strip()]
  if valid is not None:
    for x in items:
      if x not in valid:
        raise ValueError(f"Unknown value {x!r}; valid: {', '.join(valid)}")
  return items


def cell_config(cell: Cell, overrides: list[str], protocol: str):
  c = recipe.get_config(cell.model, cell.method, cell.phase)
  c.seed = cell.seed
  c.data.protocol = protocol
  c.data.fold = cell.fold
  cli.apply_overrides(c, overrides, flag="--set ")
  return c


def make_cells(models, methods, phases, seeds, folds=(-1,)) -> list[Cell]:
  return [Cell(m, me, p, s, f) for m, me, p, s, f in
          itertools.product(models, methods, phases, seeds, folds)]


def loso_fold_count(config) -> int:
  from mer_jax import experiment, input_pipeline
  return len(input_pipeline.loso_subjects(experiment.dataset_dir(config)))


# --- running -------------------------------------------------------------------


def run_cells(cells: list[Cell], root: pathlib.Path, overrides, protocol, task_index=0,
              num_tasks=1, log=print) -> list[Cell]:
  """Trains this task's unfinished cells in turn; returns those it ran.
  Cells another live process is training are left to it; WorkdirBusy at the
  end names them."""
  from mer_jax import train
  mine = [c for i, c in enumerate(cells) if i % num_tasks == task_index]
  ran, busy = [], []
  for n, cell in enumerate(mine):
    w = cell.workdir(root)
    if (w / "metrics.json").exists():
      log(f"[{n + 1}/{len(mine)}] {w.relative_to(root)}: done, skipped")
      continue
    log(f"[{n + 1}/{len(mine)}] {w.relative_to(root)}: training")
    try:
      train.train_and_evaluate(cell_config(cell, overrides, protocol), str(w))
    except WorkdirBusy as e:
      log(f"[{n + 1}/{len(mine)}] {w.relative_to(root)}: left to its holder ({e})")
      busy.append(str(w.relative_to(root)))
      continue
    ran.append(cell)
  if busy:
    raise WorkdirBusy(f"{len(busy)} cell(s) are being trained by another process: "
                      f"{', '.join(busy)}. Rerun this command once they finish.")
  return ran


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


def table_one(data_dir: str | None) -> list[str]:
  from mer_jax.data import build
  lines = ["| method | resolution | colour | face-centring rate | information density "
           "| training samples AF / KFS / MFS |", "|---|---|---|---:|---:|---|"]
  for method in METHODS:
    qs = {}
    for phase in PHASES:
      b = build.builder(f"{method}_{phase}", data_dir)
      if build.is_built(b):
        qs[phase] = build.read_quality(b.data_dir)
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


def report(root: pathlib.Path, data_dir: str | None = None, n_resamples: int = 1000) -> str:
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
  lines += ["## Table I: dataset and methodology", ""] + table_one(data_dir) + [""]

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


def main(argv=None) -> int:
  p = cli.parser("mer_jax.study", __doc__)
  p.add_argument("--workdir", required=True)
  p.add_argument("--grid", default="", help="'paper': the paper's four models")
  p.add_argument("--models", default="", help="comma list (overrides --grid's models)")
  p.add_argument("--methods", default=",".join(PAPER_METHODS),
                 help=f"comma list of {', '.join(METHODS)} (default: the paper's two)")
  p.add_argument("--phases", default=",".join(PHASES))
  p.add_argument("--seeds", default="0")
  p.add_argument("--protocol", choices=("paper", "loso"), default="paper")
  p.add_argument("--folds", default="", help="LOSO: comma list of fold indices (default all)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override for every cell, e.g. num_epochs=10")
  p.add_argument("--task_index", type=int,
                 default=int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")))
  p.add_argument("--num_tasks", type=int,
                 default=int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1")))
  p.add_argument("--report_only", action="store_true")
  p.add_argument("--bootstrap", type=int, default=1000)
  args = cli.parse(p, argv)
  root = pathlib.Path(args.workdir).absolute()
  root.mkdir(parents=True, exist_ok=True)
  from mer_jax import models as registry
  if not args.report_only:
    models = parse_list(args.models, registry.MODEL_NAMES) if args.models else \
        list(GRIDS.get(args.grid or "paper", ()))
    if args.grid and args.grid not in GRIDS:
      raise ValueError(f"Unknown grid {args.grid!r}; valid: {', '.join(GRIDS)}")
    methods = parse_list(args.methods, METHODS)
    phases = parse_list(args.phases, PHASES)
    seeds = [int(s) for s in parse_list(args.seeds)]
    folds = [-1]
    if args.protocol == "loso":
      probe = cell_config(Cell(models[0], methods[0], phases[0], seeds[0]), args.set, "loso")
      folds = [int(f) for f in parse_list(args.folds)] if args.folds else \
          list(range(loso_fold_count(probe)))
    cells = make_cells(models, methods, phases, seeds, folds)
    print(f"{len(cells)} cells; task {args.task_index} of {args.num_tasks}", flush=True)
    run_cells(cells, root, args.set, args.protocol, args.task_index, args.num_tasks)
    if args.num_tasks > 1 and args.task_index != 0:
      print("Cells done; run with --report_only once every task has finished.")
      return 0
  data_dir = None
  for o in args.set:
    if o.startswith("data.data_dir="):
      data_dir = str(pathlib.Path(os.path.expanduser(o.split("=", 1)[1])).absolute())
  report(root, data_dir, args.bootstrap)
  print(f"report: {root / 'report.md'}")
  return 0


if __name__ == "__main__":
  cli.run(main, tuned_malloc=True)
