r"""The paper's grid in one command: every cell trained, then the paper's tables and figures.

  python -m mer_jax.study --grid paper --workdir runs/study [--seeds 0,1,2]
  python -m mer_jax.study --models poolformer_s12 --phases af,mfs --workdir runs/small \
      --set model.img_size=64 --set num_epochs=5
  python -m mer_jax.study --grid paper --protocol loso --workdir runs/loso
  python -m mer_jax.study --grid paper --methods m1,m2,m2a,m3 --workdir runs/study4
  python -m mer_jax.study --workdir runs/study --report_only

A cell is (model, method, phase, seed[, LOSO fold]); its run directory is
WORKDIR/<model>_<method>_<phase>/seed<S>[/fold<K>]. Cells with a metrics.json
of the same config are skipped, and a cell interrupted mid-training resumes
from its checkpoint, so rerunning the command continues an interrupted study;
a cell holding a run of another config stops the command (`--force` retrains it). Under a SLURM array
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
fig4_confusion.png. mer_jax.study_tables makes them from the finished runs;
this module runs the cells.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib

from mer_jax import cli
from mer_jax import configs as recipe
from mer_jax.study_tables import METHODS, PAPER_METHODS, PHASES, report
# The tables' other names, where callers of the earlier layout found them.
from mer_jax.study_tables import gather, paired_m1_m2, paired_methods, summarise_cells  # noqa: F401
from mer_jax.workdir import WorkdirBusy

GRIDS = {"paper": ("vit_b32", "swin_b", "poolformer_m36", "poolformer_m48")}


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
              num_tasks=1, log=print, force=False) -> list[Cell]:
  """Trains this task's unfinished cells in turn; returns those it ran.
  A cell is finished when its metrics.json holds a run of the cell's config
  (experiment.config_changes, paths and cadence aside); one of another config
  stops with ConfigChanged unless `force` (train's) retrains it. Cells another
  live process is training are left to it; WorkdirBusy at the end names them."""
  from mer_jax import experiment, train
  mine = [c for i, c in enumerate(cells) if i % num_tasks == task_index]
  ran, busy = [], []
  for n, cell in enumerate(mine):
    w = cell.workdir(root)
    config = cell_config(cell, overrides, protocol)
    done = w / "metrics.json"
    if done.exists() and not experiment.config_changes(
        json.loads(done.read_text())["config"], config.to_dict(),
        ignore=experiment.NEUTRAL_FIELDS):
      log(f"[{n + 1}/{len(mine)}] {w.relative_to(root)}: done, skipped")
      continue
    log(f"[{n + 1}/{len(mine)}] {w.relative_to(root)}: training")
    try:
      train.train_and_evaluate(config, str(w), force=force)
    except WorkdirBusy as e:
      log(f"[{n + 1}/{len(mine)}] {w.relative_to(root)}: left to its holder ({e})")
      busy.append(str(w.relative_to(root)))
      continue
    ran.append(cell)
  if busy:
    raise WorkdirBusy(f"{len(busy)} cell(s) are being trained by another process: "
                      f"{', '.join(busy)}. Rerun this command once they finish.")
  return ran


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
  p.add_argument("--force", action="store_true",
                 help="retrain afresh the cells whose workdir holds a run of another config "
                      "(which stops the command otherwise); see mer_jax.train --force")
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
    run_cells(cells, root, args.set, args.protocol, args.task_index, args.num_tasks,
              force=args.force)
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
