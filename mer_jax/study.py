r"""The paper's grid in one command: every cell trained, then the paper's tables and figures.

  python -m mer_jax.study --grid paper --workdir runs/study [--seeds 0,1,2]
  python -m mer_jax.study --models poolformer_s12 --phases af,mfs --workdir runs/small \
      --set model.img_size=64 --set num_epochs=5
  python -m mer_jax.study --grid paper --protocol loso --workdir runs/loso
  python -m mer_jax.study --grid paper --split_seeds 0,1,2 --workdir runs/splits
  python -m mer_jax.study --grid paper --split subject --workdir runs/subject
  python -m mer_jax.study --grid paper --methods m1,m2,m2a,m3 --workdir runs/study4
  python -m mer_jax.study --factorial --models poolformer_m36 --phases mfs --workdir runs/cube
  python -m mer_jax.study --grid paper --train_fractions 0.25,0.5,1 --workdir runs/size
  python -m mer_jax.study --datasets casme2,megc2019,casme3 --protocol loso \
      --train_fractions 0.25,0.5,1 --workdir runs/size_each
  python -m mer_jax.study --grid paper --protocol loso --set selection=test_fold_best_epoch \
      --workdir runs/loso_leak
  python -m mer_jax.study --dataset megc2019 --protocol loso --workdir runs/megc \
      --set data.manual_dir=~/me_data     # ~/me_data/{casme2,samm,smic_hs}
  python -m mer_jax.study --datasets casme2,samm,smic_hs --protocol loso --workdir runs/each
  python -m mer_jax.study --protocol cross --train_datasets casme2 --test_dataset samm \
      --workdir runs/casme2_to_samm
  python -m mer_jax.study --grid paper --protocol loso --runs_per_program 4 --workdir runs/loso
  python -m mer_jax.study --workdir runs/study --report_only

`--dataset` names the data of every cell (data.dataset: casme2, samm, smic_hs, casme3,
or megc2019, the MEGC 2019 composite, whose LOSO report gives UF1/UAR pooled and per
source dataset); `--datasets a,b` runs the study once per dataset in WORKDIR/<dataset>,
each with its own report (and Table I). `--protocol cross` trains on --train_datasets
(megc2019 = its three; the test dataset is left out of them: "the composite minus one")
and tests on every video of --test_dataset, in the shared megc3 classes by default.

A cell is (model, method, phase, split seed, seed[, LOSO fold]); its run
directory is WORKDIR/<model>_<method>_<phase>/seed<S>[/fold<K>] on the paper's
split, WORKDIR/<model>_<method>_<phase>/split<K>/seed<S> on another split seed
(`--split_seeds 0,1,2`; `data.split_seed`) and .../subject<K>/seed<S> on a
subject-independent split (`--split subject`; `data.split`). Cells with a
metrics.json of the same config are skipped, and a cell interrupted
mid-training resumes from its checkpoint, so rerunning the command continues an
interrupted study; a cell holding a run of another config stops the command
(`--force` retrains it). A cell's "training" log line gives the command that
reruns it by hand (configs/paper.py's config of the cell plus --config flags).
Under a SLURM array (or with --task_index/--num_tasks) each task runs its share
of the cells (cell i goes to task i mod N) and writes no report;
`--report_only` then gathers them. WORKDIR/study_plan.json records
every cell of the study and the LOSO fold count, so a report of an unfinished
study (or a LOSO cell missing folds) says so. A cell another process is training
(its workdir lock is held) is left to it: the other cells still run, and the
command then exits 2 naming it.

`--set selection=test_fold_best_epoch` makes every run also record each epoch's
test predictions; the report then adds the field's leaky choice (per LOSO fold the
epoch best on that fold's test videos) beside the honest one, with the inflation
(mer_jax.analysis.leak). `--train_fractions 0.25,0.5,1` runs the study once per
data.train_fraction in WORKDIR/train_fraction<F> and writes size_report.md and
fig_size.png: M1 − X against the number of training videos (mer_jax.analysis.size);
with `--datasets casme2,megc2019,casme3` each dataset's fractions lie in
WORKDIR/<dataset>/train_fraction<F> and WORKDIR/size_report.md has one table per dataset.

Models: registry names, or a temporal head on one as BACKBONE+HEAD[+frozen]
(`--models poolformer_s12,poolformer_s12+gru`: the backbone's frames voting
and its GRU over each video's frames, HEAD gru or mean, +frozen on frozen
backbone features; a temporal head has no AF cells). The report pairs each
temporal head with its backbone's frame vote on the same test videos.

`--runs_per_program K` trains up to K cells that differ only in seed or LOSO
fold as one program (mer_jax.run.multirun: their state stacked, the step
vmapped), each still in its own run directory with the files of a run trained
alone; the default 1 trains them one by one.

Methods: the paper's M1 and M2 by default; `--methods m1,m2,m2a,m3` adds
the aligned faces (M2A) and the optical flow (M3) of mer_jax.data.preprocess,
and any corner of crop x colour x size is a method too (face_rgb_384, ...).
`--factorial` runs the cube of M1 and M2's eight corners (crop frame|face x
colour rgb|gray x size 384|224; mer_jax.analysis.factorial.CUBE) for the given
models and phases, every cell with one batch size (FACTORIAL_SET, before the
--set overrides, which may change it for all eight), so that the cells differ in
their preprocessing only; the report then gives each factor's main effect and
their interactions on test macro-F1, paired on the same test videos.

WORKDIR/report.md holds Table I (dataset and methodology), Table III (per
phase and method the model with the highest VALIDATION macro-F1, its test
macro-F1 beside it, and M1 − M2 on one model per phase with a paired
bootstrap CI and p), the paper's choice by test score in a separate table
labelled optimistic, Table IV (temporal evolution per model), Table V
(per-class F1 of the validation-best models), every pair of methods per
(model, phase, seed) on the same test videos with add-one p-values and Holm
adjustment, the spread over split seeds, and for LOSO the UF1/UAR of the
predictions pooled over all folds (MEGC convention, subject-clustered CI) with
the fold count. Figures: fig2_preprocessing.png (the validation-chosen model
per phase and method, 95 % CI error bars), fig3_temporal.png,
fig4_confusion.png. mer_jax.analysis.tables makes them from the finished runs
and says how it chose; this module runs the cells.

`--explain` runs mer_jax.explain's survey (integrated gradients, SmoothGrad and
the model's own map on the test videos) on the validation-chosen model of each
method and phase (its run of the lowest split seed and seed; a run already
explained is kept) before the report, whose "Where the models look" section
reads every run's explain/explain.json (mer_jax.analysis.looking).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import pathlib
import shlex

from mer_jax.analysis import size
from mer_jax.analysis.factorial import CUBE
from mer_jax.analysis.runs import METHODS, PAPER_METHODS, PHASES, cell_coordinates, write_plan
from mer_jax.analysis.tables import report
from mer_jax.data import splits
from mer_jax.models import temporal
from mer_jax.plumbing import cli
from mer_jax.plumbing.errors import UsageError
from mer_jax.run import recipe, sources
from mer_jax.run.workdir import WorkdirBusy

GRIDS = {"paper": ("vit_b32", "swin_b", "poolformer_m36", "poolformer_m48")}
# --factorial: one batch size for the cube's eight cells (the recipe's differs for M1).
FACTORIAL_SET = ["batch_size=8", "eval_batch_size=16"]


@dataclasses.dataclass(frozen=True)
class Cell:
  model: str
  method: str
  phase: str
  seed: int
  fold: int = -1                # LOSO fold; -1 = holdout split
  split_seed: int = 0           # data.split_seed; 0 = the paper's split
  split: str = "video"          # data.split: "video" (the paper's) or "subject"

  @property
  def key(self) -> str:
    return f"{self.model}_{self.method}_{self.phase}"

  def workdir(self, root: pathlib.Path) -> pathlib.Path:
    """The paper's split keeps the original layout; other splits get a folder of their own
    (split<K> by video, subject<K> by subject) so no two cells share a run directory."""
    d = root / self.key
    if (self.split, self.split_seed) != ("video", 0):
      d = d / f"{'split' if self.split == 'video' else 'subject'}{self.split_seed}"
    d = d / f"seed{self.seed}"
    return d / f"fold{self.fold:02d}" if self.fold >= 0 else d


def parse_list(s: str, valid=None) -> list[str]:
  items = [x.strip() for x in s.split(",") if x.strip()]
  if valid is not None:
    for x in items:
      if x not in valid:
        raise UsageError(f"Unknown value {x!r}; valid: {', '.join(valid)}")
  return items


def cell_config(cell: Cell, overrides: list[str], protocol: str):
  """The cell's config: the paper's recipe (configs/paper.py's, see cell_command), its
  seed, split and fold, then the study's --set overrides."""
  c = recipe.get_config(cell.model, cell.method, cell.phase)
  c.seed = cell.seed
  c.data.protocol = protocol
  c.data.fold = cell.fold
  c.data.split_seed = cell.split_seed
  c.data.split = cell.split
  cli.apply_overrides(c, overrides, flag="--set ")
  return c


def cell_command(cell: Cell, overrides: list[str], protocol: str, root: pathlib.Path) -> str:
  """The train command that reruns `cell` by hand: configs/paper.py's config of the
  cell plus the --config flags that make it the study's (cli.override_flags)."""
  arg = recipe.to_arg(cell.model, cell.method, cell.phase)
  flags = cli.override_flags(recipe.from_arg(arg), cell_config(cell, overrides, protocol))
  return shlex.join(["python", "-m", "mer_jax.train", "--config", f"configs/paper.py:{arg}",
                     *flags, "--workdir", str(cell.workdir(root))])


def parse_models(s: str) -> list[str]:
  """The --models list: model specs, a registry name or BACKBONE+HEAD[+frozen]
  (mer_jax.models.temporal.parse_spec), each checked."""
  from mer_jax import models as registry
  items = parse_list(s)
  for spec in items:
    registry.family(temporal.parse_spec(spec)[0])
  return items


def make_cells(models, methods, phases, seeds, folds=(-1,), split_seeds=(0,),
               split="video") -> list[Cell]:
  """Every combination, but a temporal head's AF cells (one frame per video: nothing to
  run a sequence model over)."""
  return [Cell(m, me, p, s, f, k, split) for m, me, p, k, s, f in
          itertools.product(models, methods, phases, split_seeds, seeds, folds)
          if p != "af" or temporal.parse_spec(m)[1] == temporal.NONE]


def plan(cells: list[Cell], protocol: str, split: str, loso_folds: int | None) -> dict:
  """What the whole study holds (every task's cells), for the report's completeness check;
  loso_folds is the number of subjects, whatever subset of folds was asked for."""
  return {"protocol": protocol, "split": split, "loso_folds": loso_folds,
          "cells": [cell_coordinates(c.model, c.method, c.phase, c.seed, c.fold, c.split_seed)
                    for c in cells]}


def loso_fold_count(config) -> int:
  """The config's LOSO folds: its builds' subjects with a video its label scheme keeps
  (68 on the real MEGC 2019 composite)."""
  from mer_jax.run import experiment, input_pipeline
  return len(input_pipeline.loso_subjects(experiment.dataset_dirs(config),
                                          sources.scheme(config.data)))


# --- running -------------------------------------------------------------------


def run_cells(cells: list[Cell], root: pathlib.Path, overrides, protocol, task_index=0,
              num_tasks=1, log=print, force=False, runs_per_program=1) -> list[Cell]:
  """Trains this task's unfinished cells in turn; returns those it ran.
  A cell is finished when its metrics.json holds a run of the cell's config
  (experiment.config_changes, paths and cadence aside); one of another config
  stops with ConfigChanged unless `force` (train's) retrains it. Cells another
  live process is training are left to it; WorkdirBusy at the end names them.
  runs_per_program K > 1: cells that differ only in seed or LOSO fold train K at
  a time in one program (mer_jax.run.multirun), each in its own run directory."""
  from mer_jax.run import experiment, loop, multirun, steps
  mine = [c for i, c in enumerate(cells) if i % num_tasks == task_index]
  for cell in mine:  # a contradiction stops the study before its first cell, not hours in
    steps.check_method_fields(cell_config(cell, overrides, protocol))
  todo = []
  for n, cell in enumerate(mine):
    w = cell.workdir(root)
    config = cell_config(cell, overrides, protocol)
    done = w / "metrics.json"
    if done.exists() and not experiment.config_changes(
        json.loads(done.read_text())["config"], config.to_dict(),
        ignore=experiment.NEUTRAL_FIELDS):
      log(f"[{n + 1}/{len(mine)}] {w.relative_to(root)}: done, skipped")
      continue
    todo.append((n, cell, config))
  ran, busy = [], []
  # A cell trained alone is finished (its last checkpoint writes, report) by the finisher
  # while the next one trains; closing it waits for the last.
  with contextlib.closing(loop.Finisher()) as finisher:
    for group in multirun.group_runs([config for _, _, config in todo], runs_per_program):
      program = [todo[i] for i in group]
      names = [str(cell.workdir(root).relative_to(root)) for _, cell, _ in program]
      for n, cell, _ in program:
        log(f"[{n + 1}/{len(mine)}] {cell.workdir(root).relative_to(root)}: training"
            f"{f' ({len(program)} in one program)' if len(program) > 1 else ''}; by hand: "
            f"{cell_command(cell, overrides, protocol, root)}")
      try:
        if len(program) == 1:
          loop.train_and_evaluate(program[0][2], str(program[0][1].workdir(root)), force=force,
                                  finisher=finisher)
        else:
          multirun.train_and_evaluate_many([config for _, _, config in program],
                                           [cell.workdir(root) for _, cell, _ in program],
                                           force=force)
      except WorkdirBusy as e:
        for n, cell, _ in program:
          log(f"[{n + 1}/{len(mine)}] {cell.workdir(root).relative_to(root)}: left to its "
              f"holder ({e})")
        busy += names
        continue
      ran += [cell for _, cell, _ in program]
  if busy:
    raise WorkdirBusy(f"{len(busy)} cell(s) are being trained by another process: "
                      f"{', '.join(busy)}. Rerun this command once they finish.")
  return ran


def explain_chosen(root: pathlib.Path, log=print) -> None:
  """Explains the test videos of the runs looking.runs_to_explain chooses, unless explained."""
  from mer_jax.analysis.looking import runs_to_explain
  from mer_jax.explain.survey import explain_run
  for w in runs_to_explain(root):
    if (w / "explain" / "explain.json").exists():
      log(f"{w.relative_to(root)}: explained, kept (delete its explain/ to redo)")
      continue
    explain_run(w, say=log)


def main(argv=None) -> int:
  p = cli.parser("mer_jax.study", __doc__)
  p.add_argument("--workdir", required=True)
  p.add_argument("--grid", default="", help="'paper': the paper's four models")
  p.add_argument("--models", default="",
                 help="comma list (overrides --grid's models); BACKBONE+gru, BACKBONE+mean "
                      "(+frozen) for a temporal head, e.g. poolformer_s12,poolformer_s12+gru")
  p.add_argument("--methods", default="",
                 help=f"comma list of {', '.join(METHODS)} (default: the paper's two)")
  p.add_argument("--factorial", action="store_true",
                 help="the eight corners of crop (frame|face) x colour x size (384|224) as "
                      "the methods, one batch size for all; the report adds their effects")
  p.add_argument("--phases", default=",".join(PHASES))
  p.add_argument("--seeds", default="0")
  p.add_argument("--protocol", choices=("paper", "loso", "cross"), default="paper")
  p.add_argument("--dataset", default="",
                 help="data.dataset of every cell: casme2 (default), samm, smic_hs, casme3, "
                      "megc2019 (the composite)")
  p.add_argument("--datasets", default="",
                 help="comma list: the study once per dataset in WORKDIR/<dataset>")
  p.add_argument("--train_datasets", default="", help="--protocol cross: trained on")
  p.add_argument("--test_dataset", default="", help="--protocol cross: tested on")
  p.add_argument("--folds", default="", help="LOSO: comma list of fold indices (default all)")
  p.add_argument("--split_seeds", default="0",
                 help="comma list of data.split_seed values: each cell runs on each split "
                      "(0 = the paper's split)")
  p.add_argument("--split", choices=("video", "subject"), default="video",
                 help="holdout split: 'video' (the paper's; subjects shared) or 'subject' "
                      "(test and validation subjects never in training)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override for every cell, e.g. num_epochs=10")
  p.add_argument("--task_index", type=int,
                 default=int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")))
  p.add_argument("--num_tasks", type=int,
                 default=int(os.environ.get("SLURM_ARRAY_TASK_COUNT", "1")))
  p.add_argument("--train_fractions", default="",
                 help="comma list of data.train_fraction values (e.g. 0.25,0.5,1): the whole "
                      "study once per fraction in WORKDIR/train_fraction<F>, then the M1 − X "
                      "difference against the number of training videos (size_report.md, "
                      "fig_size.png)")
  p.add_argument("--report_only", action="store_true")
  p.add_argument("--force", action="store_true",
                 help="retrain afresh the cells whose workdir holds a run of another config "
                      "(which stops the command otherwise); see mer_jax.train --force")
  p.add_argument("--runs_per_program", type=int, default=1, metavar="K",
                 help="train up to K cells that differ only in seed or LOSO fold as one "
                      "program (parameters stacked, the step vmapped; mer_jax.run.multirun)")
  p.add_argument("--bootstrap", type=int, default=1000)
  p.add_argument("--explain", action="store_true",
                 help="explain the validation-chosen model of each method and phase "
                      "(mer_jax.explain) and report where the models look")
  args = cli.parse(p, argv)
  root = pathlib.Path(args.workdir).absolute()
  if args.datasets and args.dataset:
    raise UsageError("--datasets runs one study per dataset (WORKDIR/<dataset>); drop "
                     "--dataset")
  roots = ({name: root / name for name in parse_list(args.datasets, sources.DATASET_NAMES)}
           if args.datasets else {args.dataset: root})
  fractions = [float(f) for f in parse_list(args.train_fractions)]
  for f in fractions:
    splits.check_train_fraction(f)
  sized = False
  for name, where in roots.items():
    overrides = data_overrides(args, name) + args.set  # the user's --set still wins
    # --report_only reads a --train_fractions study back from its folders.
    fs = fractions or (size.fractions_of(where) if args.report_only else [])
    if not fs:
      _study(args, where, overrides)
    for f in fs:
      _study(args, size.fraction_dir(where, f), overrides + [f"data.train_fraction={f:g}"])
    sized = sized or bool(fs)
  if sized and (args.report_only or args.num_tasks == 1):
    size.report(root)
    print(f"size report: {root / 'size_report.md'}")
  return 0


def data_overrides(args, dataset: str) -> list[str]:
  """The --set items of --dataset (or one of --datasets) and the cross protocol's flags."""
  out = [f"data.dataset={dataset}"] if dataset else []
  if (args.protocol == "cross") != bool(args.train_datasets and args.test_dataset):
    raise UsageError("--protocol cross takes --train_datasets and --test_dataset (both), "
                     "and they need --protocol cross")
  if args.protocol == "cross":
    out += [f"data.train_datasets={args.train_datasets}",
            f"data.test_dataset={args.test_dataset}"]
  return out


def _study(args, root: pathlib.Path, overrides: list[str]) -> int:
  """One study (the cells of args with `overrides`) in root, then its report."""
  root.mkdir(parents=True, exist_ok=True)
  if not args.report_only:
    models = parse_models(args.models) if args.models else \
        list(GRIDS.get(args.grid or "paper", ()))
    if args.grid and args.grid not in GRIDS:
      raise UsageError(f"Unknown grid {args.grid!r}; valid: {', '.join(GRIDS)}")
    if args.factorial and args.methods:
      raise UsageError("--factorial runs the cube's eight methods; drop --methods.")
    methods = ([m.value for m in CUBE] if args.factorial else
               parse_list(args.methods or ",".join(PAPER_METHODS), METHODS))
    if args.factorial:
      overrides = FACTORIAL_SET + overrides  # before the user's: their --set still wins
    phases = parse_list(args.phases, PHASES)
    seeds = [int(s) for s in parse_list(args.seeds)]
    split_seeds = [int(s) for s in parse_list(args.split_seeds)]
    folds, n_folds = [-1], None
    if args.protocol == "loso":
      if split_seeds != [0] or args.split != "video":
        raise UsageError("--split_seeds and --split choose a holdout split; LOSO's folds are "
                         "fixed. Drop them, or use --protocol paper.")
      probe = cell_config(Cell(models[0], methods[0], phases[0], seeds[0]), overrides, "loso")
      n_folds = loso_fold_count(probe)
      folds = [int(f) for f in parse_list(args.folds)] if args.folds else list(range(n_folds))
    cells = make_cells(models, methods, phases, seeds, folds, split_seeds, args.split)
    write_plan(root, plan(cells, args.protocol, args.split, n_folds))
    print(f"{len(cells)} cells; task {args.task_index} of {args.num_tasks}", flush=True)
    if args.runs_per_program < 1:
      raise UsageError(f"--runs_per_program must be at least 1, got {args.runs_per_program}")
    run_cells(cells, root, overrides, args.protocol, args.task_index, args.num_tasks,
              force=args.force, runs_per_program=args.runs_per_program)
    if args.num_tasks > 1:
      # Other tasks may still be training: no task writes a partial report.
      print("Cells done; run with --report_only once every task has finished.")
      return 0
  if args.explain:
    explain_chosen(root)
  report(root, args.bootstrap)
  print(f"report: {root / 'report.md'}")
  return 0


if __name__ == "__main__":
  cli.run(main)
