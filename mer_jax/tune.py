r"""Hyper-parameter search with Optuna, on validation macro-F1.

  python -m mer_jax.tune --config configs/pool_m36_mfs.py --trials 20 [--workdir runs/tune_pool_m36_mfs]

Searches drop path (0.05-0.3), dropout (0-0.2), the loss (focal / class-weighted
CE) and the learning rate (log-uniform around the paper's 5e-5) -- each range
can be changed, and any config field fixed with `--config.FIELD=VALUE`. Every
trial is a full `mer_jax.train` run in WORKDIR/trial_NNN (early stopping,
best checkpoint, report), scored by its best validation macro-F1 at the video
level; the test split is evaluated by each run but never looked at here.
Bad trials are pruned (median rule over the epochs' validation macro-F1), and
a trial whose loss turns NaN/inf is pruned too.

The study lives in SQLite (WORKDIR/optuna.db): rerunning the command goes on
to --trials finished trials. A trial killed mid-run is detected by its missing
heartbeat and re-run with the same parameters, resuming from its checkpoint.
Several workers (e.g. a SLURM array, one process each) can share the study by
running the same command with the same --workdir on a shared file system.
At the end it prints the best parameters and the command that trains with them:
the config file, every --config override the search was given and the best
trial's values, so that it trains exactly the best trial's config (also in
WORKDIR/best.json; every trial in WORKDIR/trials.csv).
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
import shlex

from mer_jax.plumbing import cli
from mer_jax.plumbing.errors import UsageError
from mer_jax.run.losses import Loss

DEFAULT_SPACE = {"drop_path": ("0.05", "0.3"), "dropout": ("0.0", "0.2"),
                 "lr": ("1e-5", "3e-4"), "losses": ("focal", "weighted_ce")}

HEARTBEAT_S = 30


def _range(values, name) -> tuple[float, float]:
  try:
    lo, hi = (float(v) for v in values)
  except ValueError:
    raise UsageError(f"--{name} takes two numbers LOW,HIGH, got {','.join(values)}") from None
  if not lo <= hi:
    raise UsageError(f"--{name}: LOW {lo} is above HIGH {hi}")
  return lo, hi


def search_space(drop_path=DEFAULT_SPACE["drop_path"], dropout=DEFAULT_SPACE["dropout"],
                 lr=DEFAULT_SPACE["lr"], losses=DEFAULT_SPACE["losses"]) -> dict:
  """The search ranges (LOW, HIGH strings or numbers; losses by name), checked."""
  space = {"model.drop_path_rate": _range(drop_path, "drop_path"),
           "model.drop_rate": _range(dropout, "dropout"),
           "optim.lr": _range(lr, "lr"),
           "loss.name": tuple(losses)}
  valid = Loss.names()
  bad = [l for l in space["loss.name"] if l not in valid]
  if bad or not space["loss.name"]:
    raise UsageError(f"--losses: unknown {bad}; valid: {', '.join(valid)}")
  if space["optim.lr"][0] <= 0:
    raise UsageError("--lr: the learning rate must be positive")
  return space


def suggest(trial, space: dict) -> dict:
  """Config overrides of one trial."""
  def num(name, log=False):
    lo, hi = space[name]
    return lo if lo == hi else trial.suggest_float(name, lo, hi, log=log)
  return {"model.drop_path_rate": num("model.drop_path_rate"),
          "model.drop_rate": num("model.drop_rate"),
          "optim.lr": num("optim.lr", log=True),
          "loss.name": trial.suggest_categorical("loss.name", list(space["loss.name"]))}


def with_values(config, values: dict):
  """A copy of config with typed values set by dotted name (a trial's suggestions);
  cli.apply_overrides is its text counterpart, for FIELD=VALUE flags."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for name, value in values.items():
      node = c
      *path, last = name.split(".")
      for p in path:
        node = node[p]
      node[last] = value
  return c


def trial_dir(workdir: pathlib.Path, trial) -> pathlib.Path:
  """A retried trial (killed before) reuses its original's directory and checkpoint."""
  import warnings

  import optuna
  frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
  with warnings.catch_warnings():  # "experimental": see open_study
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    original = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
  return workdir / f"trial_{(trial.number if original is None else original):03d}"


def make_objective(config, workdir: pathlib.Path, space: dict):
  import optuna

  from mer_jax.run import loop

  def objective(trial):
    overrides = suggest(trial, space)
    c = with_values(config, overrides)
    d = trial_dir(workdir, trial)
    trial.set_user_attr("workdir", str(d))
    trial.set_user_attr("overrides", overrides)  # with fixed ranges, which are no params
    print(f"\n== trial {trial.number} ({d.name}): "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in overrides.items()), flush=True)

    def on_epoch(record):
      trial.report(record["val_macro_f1"], step=record["epoch"])
      if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at epoch {record['epoch']} (validation macro-F1 "
                                 f"{record['val_macro_f1']:.4f} below the median)")

    try:
      out = loop.train_and_evaluate(c, str(d), on_epoch=on_epoch)
    except loop.NonFiniteLossError:
      trial.set_user_attr("stopped", "non-finite loss")
      raise optuna.TrialPruned("the loss became NaN/inf") from None
    value = float(out["validation"]["macro_f1"])  # the best checkpoint's, video level
    trial.set_user_attr("best_epoch", out.get("best_epoch"))
    return value

  return objective


def open_study(workdir: pathlib.Path, name: str, seed: int, startup_trials: int = 3,
               warmup_epochs: int = 3):
  import warnings

  import optuna
  # Heartbeats and their retry callback are flagged "experimental" since optuna
  # 2.8; since 4.9 they are the supported way to retry a killed trial.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{workdir / 'optuna.db'}", heartbeat_interval=HEARTBEAT_S,
        grace_period=3 * HEARTBEAT_S,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=3, inherit_intermediate_values=True),
        engine_kwargs={"connect_args": {"timeout": 60}})
  return optuna.create_study(
      study_name=name, storage=storage, direction="maximize", load_if_exists=True,
      sampler=optuna.samplers.TPESampler(seed=seed),
      pruner=optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                         n_warmup_steps=warmup_epochs))


def finished(study) -> int:
  import optuna
  states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
  return len(study.get_trials(deepcopy=False, states=states))


def train_command(config_path: str, config) -> tuple[str, list[str]]:
  """(the `mer_jax.train` command that trains `config`, its --config.FIELD
  flags): every field where `config` differs from CONFIG_PATH's own."""
  flags = cli.override_flags(cli.load_config(config_path), config)
  return " ".join(["python -m mer_jax.train --config", shlex.quote(config_path)]
                  + [shlex.quote(f) for f in flags]), flags


def write_summary(study, workdir: pathlib.Path, config, config_path: str) -> dict | None:
  """trials.csv, best.json and the printed summary; None before any trial completes.
  best.json's command reproduces the best trial's config: the search's own
  overrides of CONFIG_PATH (`config`) and the trial's values."""
  import optuna
  trials = study.get_trials(deepcopy=False)
  keys = sorted({k for t in trials for k in t.params})
  with open(workdir / "trials.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["number", "state", "value", "epochs"] + keys + ["workdir"])
    for t in trials:
      w.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6f}",
                  len(t.intermediate_values)] + [t.params.get(k, "") for k in keys]
                 + [t.user_attrs.get("workdir", "")])
  done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
  print(f"\n{len(trials)} trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
  if not done:
    print("No trial has completed yet.")
    return None
  best = study.best_trial
  command, flags = train_command(
      config_path, with_values(config, best.user_attrs["overrides"]))
  best_info = {"trial": best.number, "validation_macro_f1": best.value, "params": best.params,
               "workdir": best.user_attrs.get("workdir"), "overrides": flags,
               "command": command}
  (workdir / "best.json").write_text(json.dumps(best_info, indent=1))
  print(f"best: trial {best.number}, validation macro-F1 {best.value:.4f}")
  for k, v in best.params.items():
    print(f"  {k} = {v:.4g}" if isinstance(v, float) else f"  {k} = {v}")
  print(f"train with them: {best_info['command']}")
  print(f"trials: {workdir / 'trials.csv'}")
  return best_info


def tune(config, workdir: str, trials: int, *, space: dict | None = None,
         study_name: str = "mer_jax", seed: int = 0, prune_startup_trials: int = 3,
         prune_warmup_epochs: int = 3, config_path: str) -> dict | None:
  """Runs trials until `trials` have finished; returns best.json's dict.
  `config` is CONFIG_PATH's config with the search's fixed overrides."""
  import optuna

  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  space = space or search_space()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = open_study(workdir, study_name, seed, prune_startup_trials, prune_warmup_epochs)
  study.set_user_attr("config", config.to_dict())
  remaining = trials - finished(study)
  if remaining > 0:
    print(f"Study {study_name} in {workdir / 'optuna.db'}: {finished(study)} of {trials} "
          "trials finished; running the rest.", flush=True)
    study.optimize(make_objective(config, workdir, space), n_trials=None, gc_after_trial=True,
                   callbacks=[optuna.study.MaxTrialsCallback(
                       trials, states=(optuna.trial.TrialState.COMPLETE,
                                       optuna.trial.TrialState.PRUNED))])
  return write_summary(study, workdir, config, config_path)


def main(argv=None) -> int:
  p = cli.parser("mer_jax.tune", __doc__)
  cli.add_config(p, help="base config file, e.g. configs/pool_m36_mfs.py")
  p.add_argument("--workdir", default=None, help="study directory (default runs/tune_<config>)")
  p.add_argument("--trials", type=int, default=20,
                 help="finished (complete or pruned) trials to reach")
  p.add_argument("--study_name", default="mer_jax", help="name of the study in the storage")
  p.add_argument("--sampler_seed", type=int, default=0, help="seed of the TPE sampler")
  for name, what in (("drop_path", "drop_path_rate range LOW,HIGH"),
                     ("dropout", "head dropout range LOW,HIGH"),
                     ("lr", "learning-rate range LOW,HIGH (log-uniform)"),
                     ("losses", "losses to choose from")):
    p.add_argument(f"--{name}", default=",".join(DEFAULT_SPACE[name]), help=what)
  p.add_argument("--prune_warmup_epochs", type=int, default=3,
                 help="epochs a trial runs before it may be pruned")
  p.add_argument("--prune_startup_trials", type=int, default=3,
                 help="trials that finish before any is pruned")
  args = cli.parse(p, argv)
  import jax
  if jax.process_count() > 1:
    raise UsageError("tune runs one JAX process per worker; start several workers with the "
                     "same --workdir instead of a multi-process launch.")
  config = args.config
  workdir = args.workdir or os.path.join(
      "runs", f"tune_{config.model.name}_{config.data.method}_{config.data.phase}")
  if args.trials < 1:
    raise UsageError("--trials must be >= 1")
  from mer_jax.run import steps
  steps.check_config(config)
  split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
  space = search_space(split(args.drop_path), split(args.dropout), split(args.lr),
                       split(args.losses))
  for loss in space["loss.name"]:  # every trial's config, before the first trial
    steps.check_method_fields(with_values(config, {"loss.name": loss}))
  tune(config, workdir, args.trials, space=space, study_name=args.study_name,
       seed=args.sampler_seed, prune_startup_trials=args.prune_startup_trials,
       prune_warmup_epochs=args.prune_warmup_epochs, config_path=args.config_path)
  return 0


if __name__ == "__main__":
  cli.run(main)
