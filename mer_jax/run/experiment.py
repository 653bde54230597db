"""One config's dataset, model and mesh, and what is done with a run's params.

`make_setup(config)` builds the config's TFDS dataset if it is missing, loads
its splits, makes the model and the mesh; `evaluate_split` predicts every frame
of a split and summarises it; `load_run_config` and `restore_state` read a
trained run's directory back (predict and evaluate need no dataset for that);
`config_changes` and `claim_workdir` keep a workdir's run to one config.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from mer_jax.run import checkpointing
from mer_jax.run import input_pipeline
from mer_jax.run import report
from mer_jax.run import sequences
from mer_jax.run import sources
from mer_jax.plumbing import runtime
from mer_jax.run import steps
from mer_jax.plumbing.errors import NotFound, UsageError


def dataset_dirs(config, log=print) -> dict[str, str]:
  """dataset -> the build of `config.data`'s TFDS config from its source (sources.members:
  one dataset, a composite's three, a cross-dataset run's), each built first if there is
  none of the same fingerprint (mer_jax.data.fingerprint); logs each fingerprint in one
  line. With data.synthetic, a missing source is written first (synthetic stand-ins)."""
  from mer_jax.data import build, dataset_configs, fingerprint
  names = sources.members(config.data)
  manual = sources.manual_dirs(config.data.manual_dir, names)
  data_dir = (str(pathlib.Path(os.path.expanduser(config.data.data_dir)).absolute())
              if config.data.data_dir else None)
  log = log if runtime.is_main_process() else (lambda *a: None)
  out = {}
  for name in names:
    out[name] = build.ensure_built(
        dataset_configs.config_name(config.data.method, config.data.phase), manual[name],
        data_dir, dataset=name, synthetic=config.data.synthetic,
        synthetic_videos=config.data.synthetic_videos,
        synthetic_subjects=config.data.synthetic_subjects,
        synthetic_intensity=config.data.get("synthetic_intensity", 1.0), log=log)
    log(f"dataset {out[name]}: {fingerprint.describe(fingerprint.read(out[name]))}")
  return out


def build_record(dirs: dict[str, str]) -> dict:
  """metrics.json's `dataset`: the build's fingerprint and "dir"; several builds (a
  composite, cross): {"builds": {dataset: that record}}."""
  from mer_jax.data import fingerprint
  records = {n: dict(fingerprint.read(d), dir=d) for n, d in dirs.items()}
  return next(iter(records.values())) if len(records) == 1 else {"builds": records}


@dataclasses.dataclass
class Setup:
  """What training and evaluation of one config share."""
  config: Any
  data: dict            # split name -> input_pipeline.SplitData (a temporal head's:
                        # sequences.VideoSplit)
  model: Any
  in_chans: int
  mesh: Any
  dataset: dict         # the builds' fingerprints and dirs (build_record; metrics.json's)


def make_setup(config, log=print) -> Setup:
  steps.check_config(config)
  dirs = dataset_dirs(config, log)
  scheme = sources.scheme(config.data)
  data = input_pipeline.load_splits(dirs, config.data.protocol, config.data.fold,
                                    config.data.get("split", "video"),
                                    config.data.get("split_seed", 0),  # runs before them lack them
                                    scheme=scheme,
                                    test_datasets=sources.train_test(config.data)[1])
  data = input_pipeline.subsample_train(data, config.data.get("train_fraction", 1.0),
                                        config.seed, scheme.classes)
  in_chans = data["train"].images.shape[-1]
  if sequences.is_temporal(config):
    data = sequences.video_splits(data)
  return Setup(config, data, steps.build_model(config, in_chans), in_chans,
               runtime.make_mesh(), build_record(dirs))


def jit_predict(setup: Setup):
  if sequences.is_temporal(setup.config):
    return sequences.jit_predict(setup.model, setup.config.model.img_size, setup.mesh)
  return steps.jit_predict(setup.model, setup.config.model.img_size, setup.mesh)


def predict_split(setup: Setup, params, split: str, predict_fn) -> np.ndarray:
  """Class probabilities [N, classes] of every frame of a split (all processes get all)."""
  data = setup.data[split]
  out = []
  for batch in input_pipeline.eval_batches(data, setup.config.eval_batch_size):
    g = runtime.to_global({"image": batch["image"]}, setup.mesh)
    out.append(np.asarray(predict_fn(params, g["image"])))
  return np.concatenate(out)[:len(data)]


def evaluate_split(setup: Setup, params, split: str, predict_fn) -> dict:
  data = setup.data[split]
  c = setup.config
  if sequences.is_temporal(c):
    return sequences.summarise(data, sequences.predict_videos(
        data, params, predict_fn, c.eval_batch_size, setup.mesh), c)
  return report.summarise(predict_split(setup, params, split, predict_fn), data.labels,
                          data.video_ids, data.subjects, n_resamples=c.bootstrap_resamples,
                          level=c.ci_level, seed=c.seed, datasets=data.datasets,
                          classes=sources.classes(c.data))


def load_run_config(workdir: str | pathlib.Path):
  """The ConfigDict a run was trained with (WORKDIR/config.json)."""
  import ml_collections
  cfg_path = pathlib.Path(workdir).absolute() / "config.json"
  if not cfg_path.exists():
    raise NotFound(f"{cfg_path} not found: is {cfg_path.parent} a mer_jax run "
                   "directory (the --workdir of python -m mer_jax.train)?")
  return ml_collections.ConfigDict(json.loads(cfg_path.read_text()))


def restore_state(workdir: str | pathlib.Path, config, model, in_chans: int, mesh, *,
                  checkpoint: str = "best", say=print) -> checkpointing.Restored:
  """A run's best checkpoint (else its latest), or with checkpoint="latest"
  its newest intact one.

  A corrupt checkpoint is passed over for the next intact one (said, and
  recorded in the result); raises NotFound when the run saved none
  yet. Needs only the model, not the dataset.
  """
  workdir = pathlib.Path(workdir).absolute()
  ckpt = checkpointing.Checkpoints(workdir, config.checkpoint_keep)
  abstract = steps.abstract_state(model, config, in_chans, steps.make_optimizer(config, 1),
                                  runtime.replicated(mesh))
  try:
    restored = ckpt.restore_best(abstract, say=say) if checkpoint == "best" \
        else ckpt.restore_latest(abstract, say=say)
  finally:
    ckpt.close()
  if restored is None:
    raise NotFound(f"No checkpoint in {workdir / 'checkpoints'}: the run saved "
                   "nothing yet (it saves at an epoch's end at most every "
                   f"{checkpointing.SAVE_EVERY_SECONDS:g} s, and at the run's end).")
  return restored


# --- a workdir's run and the requested config -----------------------------------------

# Fields that cannot change a run's numbers: where the data and caches lie
# (what the data are, metrics.json's dataset fingerprint says), how fast the
# input is fed, how often the run logs and checkpoints, and those that change
# only float rounding (the batch size of evaluation, recomputing activations
# to save memory, the per-step or scanned training loop: run.programs). A run
# resumes, and a finished study cell is skipped, whatever their values; the
# run's config.json then records the new ones.
NEUTRAL_FIELDS = ("data.manual_dir", "data.data_dir", "init.cache_dir", "data.prefetch",
                  "log_every_steps", "checkpoint_every_steps", "checkpoint_keep",
                  "eval_batch_size", "model.remat", "train_loop", "scan_steps")
# Fields that change what a run reports but not what it trained so far: a
# resumed run takes the new value (num_epochs: a larger one continues the
# run; the bootstrap: its intervals are computed anew), a finished study
# cell is rerun rather than skipped. num_epochs counts only with the
# constant schedule: the cosine schedule decays over it, so another value
# is another run.
RERUN_FIELDS = ("num_epochs", "bootstrap_resamples", "ci_level")
# What train and its report write into a workdir: --force deletes these.
RUN_FILES = ("checkpoints", "tensorboard", "config.json", "metrics.json", "metrics.jsonl",
             "report.md", "confusion_test.png", "predictions_*.csv", report.EPOCH_PREDICTIONS)


class ConfigChanged(UsageError):
  """A workdir holds a run of another config."""


def _flat(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def config_changes(saved: Mapping, requested: Mapping, *,
                   ignore: Sequence[str] = NEUTRAL_FIELDS + RERUN_FIELDS) -> list[str]:
  """'field: old -> new' for each field of two configs (nested dicts) that
  differs, but those in `ignore`; num_epochs is not ignored under a schedule
  that depends on it (see RERUN_FIELDS). A field only one of them has is
  '(absent)' in the other."""
  a, b = _flat(saved), _flat(requested)
  constant = a.get("optim.schedule") == b.get("optim.schedule") == "constant"
  skip = {f for f in ignore if f != "num_epochs" or constant}
  absent = object()
  changes = []
  for field in sorted(a.keys() | b.keys()):
    old, new = a.get(field, absent), b.get(field, absent)
    if field not in skip and old != new:
      changes.append(f"{field}: {'(absent)' if old is absent else repr(old)} -> "
                     f"{'(absent)' if new is absent else repr(new)}")
  return changes


def claim_workdir(workdir: str | pathlib.Path, config, *, force: bool = False,
                  say=print) -> None:
  """Lets a run of `config` use WORKDIR: nothing there, or a run whose saved
  config differs from it only in NEUTRAL_FIELDS and RERUN_FIELDS (and has not
  trained more epochs than num_epochs). Otherwise raises ConfigChanged, one
  line naming the differences; with `force`, deletes the old run (RUN_FILES)
  instead, so that the run starts afresh. Every process calls it."""
  workdir = pathlib.Path(workdir).absolute()
  cfg = workdir / "config.json"
  checkpoints = [d for d in (workdir / "checkpoints").glob("*/*") if d.name.isdigit()]
  if cfg.exists():
    changes = config_changes(json.loads(cfg.read_text()), config.to_dict())
    if not changes and checkpoints:
      ckpt = checkpointing.Checkpoints(workdir, config.checkpoint_keep)
      meta = ckpt.latest_meta()
      ckpt.close()
      if meta is not None and meta["epoch"] > config.num_epochs:
        changes = [f"num_epochs: {config.num_epochs} is fewer than the {meta['epoch']} "
                   "epochs it has trained"]
  elif checkpoints:
    changes = ["config.json is missing, so which config trained its checkpoints is unknown"]
  else:
    return
  if not changes:
    return
  if not force:
    raise ConfigChanged(
        f"{workdir} holds a run of another config ({'; '.join(changes)}): rerun with "
        "--force to delete that run and train afresh, or use another workdir")
  _sync_processes("mer_jax.claim_workdir.read")
  if runtime.is_main_process():
    say(f"--force: deleting the run of another config in {workdir} ({'; '.join(changes)})")
    for pattern in RUN_FILES:
      for path in workdir.glob(pattern):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
  _sync_processes("mer_jax.claim_workdir.deleted")


def _sync_processes(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
