"""One config's dataset, model and mesh, and what is done with a run's params.

`make_setup(config)` builds the config's TFDS dataset if it is missing, loads
its splits, makes the model and the mesh; `evaluate_split` predicts every frame
of a split and summarises it; `load_run_config` and `restore_state` read a
trained run's directory back (predict and evaluate need no dataset for that).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from mer_jax import checkpointing
from mer_jax import input_pipeline
from mer_jax import report
from mer_jax import runtime
from mer_jax import steps
from mer_jax.errors import NotFound


def dataset_dir(config, log=print) -> str:
  """The build of `config.data`'s TFDS config from its source (manual_dir), built
  first if there is none of the same fingerprint (mer_jax.data.fingerprint);
  logs the fingerprint in one line."""
  from mer_jax.data import build, dataset_configs, fingerprint
  manual = str(pathlib.Path(os.path.expanduser(config.data.manual_dir)).absolute())
  data_dir = (str(pathlib.Path(os.path.expanduser(config.data.data_dir)).absolute())
              if config.data.data_dir else None)
  log = log if runtime.is_main_process() else (lambda *a: None)
  d = build.ensure_built(
      dataset_configs.config_name(config.data.method, config.data.phase), manual, data_dir,
      synthetic=config.data.synthetic, synthetic_videos=config.data.synthetic_videos,
      synthetic_subjects=config.data.synthetic_subjects,
      synthetic_intensity=config.data.get("synthetic_intensity", 1.0), log=log)
  log(f"dataset {d}: {fingerprint.describe(fingerprint.read(d))}")
  return d


@dataclasses.dataclass
class Setup:
  """What training and evaluation of one config share."""
  config: Any
  data: dict            # split name -> input_pipeline.SplitData
  model: Any
  in_chans: int
  mesh: Any
  dataset: dict         # the build's fingerprint and its "dir" (metrics.json's `dataset`)


def make_setup(config, log=print) -> Setup:
  steps.check_config(config)
  from mer_jax.data import fingerprint
  d = dataset_dir(config, log)
  data = input_pipeline.load_splits(d, config.data.protocol, config.data.fold,
                                    config.data.get("split", "video"),
                                    config.data.get("split_seed", 0))  # runs before them lack them
  in_chans = data["train"].images.shape[-1]
  return Setup(config, data, steps.build_model(config, in_chans), in_chans,
               runtime.make_mesh(), dict(fingerprint.read(d), dir=d))


def jit_predict(setup: Setup):
  return steps.jit_predict(setup.model, setup.config.model.img_size, setup.mesh)


def predict_split(setup: Setup, params, split: str, predict_fn) -> np.ndarray:
  """Class probabilities [N, 7] of every frame of a split (all processes get all)."""
  data = setup.data[split]
  out = []
  for batch in input_pipeline.eval_batches(data, setup.config.eval_batch_size):
    g = runtime.to_global({"image": batch["image"]}, setup.mesh)
    out.append(np.asarray(predict_fn(params, g["image"])))
  return np.concatenate(out)[:len(data)]


def evaluate_split(setup: Setup, params, split: str, predict_fn) -> dict:
  data = setup.data[split]
  c = setup.config
  return report.summarise(predict_split(setup, params, split, predict_fn), data.labels,
                          data.video_ids, data.subjects, n_resamples=c.bootstrap_resamples,
                          level=c.ci_level, seed=c.seed)


def load_run_config(workdir: str | pathlib.Path):
  """The ConfigDict a run was trained with (WORKDIR/config.json)."""
  import ml_collections
  cfg_path = pathlib.Path(workdir).absolute() / "config.json"
  if not cfg_path.exists():
    raise NotFound(f"{cfg_path} not found: is {cfg_path.parent} a mer_jax run "
                   "directory (the --workdir of python -m mer_jax.train)?")
  return ml_collections.ConfigDict(json.loads(cfg_path.read_text()))


def restore_state(workdir: str | pathlib.Path, config, model, in_chans: int, mesh, *,
                  checkpoint: str = "best"):
  """(state, meta, which) of a run's best checkpoint (else its latest).

  `which` says which one was restored; raises FileNotFoundError when the run
  saved none yet. Needs only the model, not the dataset.
  """
  workdir = pathlib.Path(workdir).absolute()
  ckpt = checkpointing.Checkpoints(workdir, config.checkpoint_keep)
  abstract = steps.abstract_state(model, config, in_chans, steps.make_optimizer(config, 1),
                                  runtime.replicated(mesh))
  try:
    restored = ckpt.restore_best(abstract) if checkpoint == "best" else None
    which = "best"
    if restored is None:
      restored, which = ckpt.restore_latest(abstract), "latest"
    if restored is None:
      raise NotFound(f"No checkpoint in {workdir / 'checkpoints'}: the run saved "
                     "nothing yet (it saves at the end of each epoch).")
  finally:
    ckpt.close()
  state, meta = restored
  return state, meta, which
