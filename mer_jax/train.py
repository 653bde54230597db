r"""Train, early-stop, test and report: the system's main job.

  python -m mer_jax.train --config configs/pool_m36_mfs.py --workdir runs/pool_m36_mfs

One flat loop a reader can follow top to bottom (big_vision's way):
config -> (multi-host init) -> dataset (built on first use) -> mesh ->
model + ImageNet init -> optimizer -> restore if a checkpoint exists ->
epochs of jitted steps -> validation macro-F1 at the video level ->
checkpoints (latest + best) -> early stopping -> test of the best -> report.

The same command runs on one CPU, N GPUs or many hosts: the batch is split on
the `data` axis of a Mesh of every device of every process, parameters are
replicated, and each process feeds its share of every global batch.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from mer_jax import checkpointing
from mer_jax import evaluate
from mer_jax import input_pipeline
from mer_jax import losses
from mer_jax import models
from mer_jax import runtime
from mer_jax.data import casme2
from mer_jax.models.layers import REMAT_POLICIES

_FLAGS = {}


def _define_flags():
  """The command line's flags; defined only when this module is the program,
  so other tools (mer_jax.tune) can import it and define their own."""
  _FLAGS["config"] = config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/pool_m36_mfs.py.", lock_config=True)
  _FLAGS["workdir"] = flags.DEFINE_string(
      "workdir", None, "Run directory: checkpoints, logs, metrics and report. "
      "Rerunning with the same workdir resumes.")


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


# --- optimizer and loss -----------------------------------------------------


def make_schedule(config, steps_per_epoch: int):
  o = config.optim
  total = max(1, config.num_epochs * steps_per_epoch)
  warmup = int(o.warmup_epochs * steps_per_epoch)
  if o.schedule == "constant":
    if warmup:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, o.lr, warmup), optax.constant_schedule(o.lr)],
          [warmup])
    return optax.constant_schedule(o.lr)
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, max(total, warmup + 1))
  raise ValueError(f"Unknown optim.schedule {o.schedule!r}; valid: constant, cosine")


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW as the paper (PyTorch's AdamW: decoupled decay on every parameter)."""
  o = config.optim
  tx = optax.adamw(make_schedule(config, steps_per_epoch), b1=o.b1, b2=o.b2,
                   weight_decay=o.weight_decay)
  if o.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx


LOSSES = ("focal", "weighted_ce", "ce")


def make_loss_fn(config, class_counts: np.ndarray):
  """(logits, labels, mask) -> scalar, with the inverse-frequency class
  weights of the training split (focal: as per-class alpha)."""
  weights = jnp.asarray(losses.class_weights(np.asarray(class_counts)))
  name, ls = config.loss.name, config.loss.label_smoothing
  if name == "focal":
    return functools.partial(losses.focal_loss, alpha=weights, gamma=config.loss.gamma,
                             label_smoothing=ls)
  if name == "weighted_ce":
    return functools.partial(losses.weighted_cross_entropy, weights=weights,
                             label_smoothing=ls)
  if name == "ce":
    return functools.partial(losses.weighted_cross_entropy, weights=None, label_smoothing=ls)
  raise ValueError(f"Unknown loss.name {name!r}; valid: {', '.join(LOSSES)}")


# --- the step ---------------------------------------------------------------


def make_train_step(model, tx, loss_fn, aug_cfg, img_size: int, seed: int):
  """One step: augment on device -> forward -> loss -> AdamW. The step's RNG is
  a function of (seed, step), so a resumed run draws the same numbers."""

  def step(state, batch):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
    aug_rng, drop_rng = jax.random.split(rng)
    images = input_pipeline.augment(aug_rng, batch["image"], aug_cfg, img_size)

    def loss_of(params):
      logits = model.apply({"params": params}, images, train=True,
                           rngs={"dropout": drop_rng})
      return loss_fn(logits.astype(jnp.float32), batch["label"], mask=batch["mask"])

    loss, grads = jax.value_and_grad(loss_of)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

  return step


def make_predict_step(model, img_size: int):
  def predict(params, images):
    x = input_pipeline.preprocess_eval(images, img_size)
    logits = model.apply({"params": params}, x, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return predict


# --- the run ----------------------------------------------------------------


@dataclasses.dataclass
class EarlyStopping:
  """Patience on validation macro-F1 (video level); the best epoch is what gets tested."""
  patience: int
  min_delta: float = 0.0
  best: float = -math.inf
  best_epoch: int = -1
  bad_epochs: int = 0

  def update(self, value: float, epoch: int) -> bool:
    """Records an epoch's metric; True when it is a new best."""
    if value > self.best + self.min_delta:
      self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
      return True
    self.bad_epochs += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.bad_epochs >= self.patience


def check_config(config):
  """Unknown model/method/phase/loss/protocol -> ValueError listing the valid values."""
  from mer_jax.data import phases, preprocess
  models.family(config.model.name)
  preprocess.Method.parse(config.data.method)
  phases.Phase.parse(config.data.phase)
  if config.data.protocol not in ("paper", "loso"):
    raise ValueError(f"Unknown data.protocol {config.data.protocol!r}; valid: paper, loso")
  if config.loss.name not in LOSSES:
    raise ValueError(f"Unknown loss.name {config.loss.name!r}; valid: {', '.join(LOSSES)}")
  if config.model.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"Unknown model.dtype {config.model.dtype!r}; valid: float32, bfloat16")
  if config.model.get("remat", "") not in REMAT_POLICIES:
    raise ValueError(f"Unknown model.remat {config.model.remat!r}; valid: "
                     f"{', '.join(repr(r) for r in REMAT_POLICIES)}")
  n = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % n:
      raise ValueError(f"{field}={config[field]} must be divisible by the {n} devices "
                       f"(all processes); use a multiple of {n}.")


def _write_json(path: pathlib.Path, obj):
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2))
  tmp.replace(path)


def dataset_dir(config, log=print) -> str:
  """The built TFDS config of `config.data`, built first if it is missing."""
  from mer_jax.data import build
  manual = str(pathlib.Path(os.path.expanduser(config.data.manual_dir)).absolute())
  data_dir = (str(pathlib.Path(os.path.expanduser(config.data.data_dir)).absolute())
              if config.data.data_dir else None)
  return build.ensure_built(
      build.config_name(config.data.method, config.data.phase), manual, data_dir,
      synthetic=config.data.synthetic, synthetic_videos=config.data.synthetic_videos,
      synthetic_subjects=config.data.synthetic_subjects,
      synthetic_intensity=config.data.get("synthetic_intensity", 1.0),
      log=log if runtime.is_main_process() else (lambda *a: None))


@dataclasses.dataclass
class Setup:
  """What training and evaluation of one config share."""
  config: Any
  data: dict
  model: Any
  in_chans: int
  mesh: Any


def make_setup(config, log=print) -> Setup:
  check_config(config)
  data = input_pipeline.load_splits(dataset_dir(config, log), config.data.protocol,
                                    config.data.fold)
  in_chans = data["train"].images.shape[-1]
  return Setup(config, data, build_model(config, in_chans), in_chans, runtime.make_mesh())


def build_model(config, in_chans: int):
  """The config's Flax model for 7 emotions."""
  return models.create_model(
      config.model.name, num_classes=len(casme2.EMOTIONS), img_size=config.model.img_size,
      in_chans=in_chans, drop_rate=config.model.drop_rate,
      drop_path_rate=config.model.drop_path_rate, dtype=jnp.dtype(config.model.dtype),
      remat=config.model.get("remat", ""))  # runs from before remat existed have none


def init_params(setup: Setup, log=print):
  """ImageNet weights through the converter (cached), or random init."""
  c = setup.config
  if c.init.weights:
    from mer_jax.models import convert
    log(f"Initialising from {c.init.weights}")
    variables = convert.load_pretrained(
        c.model.name, c.init.weights, img_size=c.model.img_size, in_chans=setup.in_chans,
        num_classes=len(casme2.EMOTIONS), seed=c.seed, cache_dir=c.init.cache_dir or None)
    return variables["params"]
  return jax.jit(setup.model.init)(jax.random.PRNGKey(c.seed),
                                   _dummy_images(c, setup.in_chans))["params"]


def _dummy_images(config, in_chans: int):
  return jnp.zeros((1, config.model.img_size, config.model.img_size, in_chans), jnp.float32)


def abstract_state(model, config, in_chans: int, tx, sharding):
  """Shapes, dtypes and sharding of the train state {step, params, opt_state},
  what a checkpoint is restored into (converted weights have the model's own
  structure, so random-init shapes serve every run)."""
  def shapes():
    params = model.init(jax.random.PRNGKey(0), _dummy_images(config, in_chans))["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      jax.eval_shape(shapes))


def predict(setup: Setup, params, split: str, predict_fn) -> np.ndarray:
  """Class probabilities [N, 7] of every frame of a split (all processes get all)."""
  data = setup.data[split]
  bs = setup.config.eval_batch_size
  out = []
  for batch in input_pipeline.eval_batches(data, bs):
    g = runtime.to_global({"image": batch["image"]}, setup.mesh)
    out.append(np.asarray(predict_fn(params, g["image"])))
  return np.concatenate(out)[:len(data)]


def evaluate_split(setup: Setup, params, split: str, predict_fn) -> dict:
  data = setup.data[split]
  c = setup.config
  return evaluate.summarise(predict(setup, params, split, predict_fn), data.labels,
                            data.video_ids, n_resamples=c.bootstrap_resamples,
                            level=c.ci_level, seed=c.seed)


def jit_predict(setup: Setup):
  rep = runtime.replicated(setup.mesh)
  return jax.jit(make_predict_step(setup.model, setup.config.model.img_size),
                 out_shardings=rep)


class _Logger:
  """JSONL of every metric, TensorBoard events; main process only."""

  def __init__(self, workdir: pathlib.Path, enabled: bool):
    self.enabled = enabled
    self._jsonl = open(workdir / "metrics.jsonl", "a") if enabled else None
    self._tb = None
    if enabled:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:
        logging.warning("tensorboardX not installed: no TensorBoard events")

  def write(self, step: int, **scalars):
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self):
    if self._jsonl:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _say(*args):
  if runtime.is_main_process():
    print(*args, flush=True)


def train_and_evaluate(config, workdir: str, on_epoch=None) -> dict:
  """Trains with early stopping, tests the best checkpoint, writes the report.

  Resumes from WORKDIR/checkpoints/latest if present (a finished run is only
  re-tested; a larger num_epochs continues it unless it stopped early).
  `on_epoch(record)`, if given, is called with each epoch's history record
  after its checkpoint is saved (the tuner prunes from it by raising).
  Returns the metrics.json dict.
  """
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  main = runtime.is_main_process()
  setup = make_setup(config, _say)
  c = config
  train = setup.data["train"]
  global_batch = c.batch_size
  spe = input_pipeline.steps_per_epoch(max(len(train), global_batch), global_batch)
  tx = make_optimizer(c, spe)
  counts = np.bincount(train.labels, minlength=len(casme2.EMOTIONS))
  loss_fn = make_loss_fn(c, counts)
  if main:
    _write_json(workdir / "config.json", c.to_dict())

  rep = runtime.replicated(setup.mesh)
  ckpt = checkpointing.Checkpoints(workdir, c.checkpoint_keep)

  def fresh_state():
    params = init_params(setup, _say)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": tx.init(params)}

  meta = ckpt.latest_meta()
  if meta is not None:
    state, meta = ckpt.restore_latest(
        abstract_state(setup.model, c, setup.in_chans, tx, rep))
    _say(f"Resuming from step {int(state['step'])} (epoch {meta['epoch']}, "
         f"step {meta['step_in_epoch']} of it)")
  else:
    state = jax.device_put(fresh_state(), rep)
    meta = {"epoch": 0, "step_in_epoch": 0, "history": [],
            "early_stopping": dataclasses.asdict(EarlyStopping(c.patience, c.min_delta)),
            "seed": c.seed}
  stopper = EarlyStopping(**meta["early_stopping"])
  history = meta["history"]

  train_step = jax.jit(make_train_step(setup.model, tx, loss_fn, c.aug, c.model.img_size,
                                       c.seed), out_shardings=(rep, rep), donate_argnums=0)
  predict_fn = jit_predict(setup)
  logger = _Logger(workdir, main)
  _say(f"{c.model.name} {c.data.method.upper()} {c.data.phase.upper()}: {len(train)} training "
       f"frames ({train.num_videos} videos), {len(setup.data['validation'])} validation, "
       f"{len(setup.data['test'])} test; {jax.device_count()} devices in "
       f"{jax.process_count()} process(es); global batch {global_batch}, {spe} steps/epoch")

  def save(best=False):
    ckpt.save(int(state["step"]), state, meta, best=best)

  try:
    epoch = meta["epoch"]
    while not stopper.should_stop and epoch < c.num_epochs:
      start_step = meta["step_in_epoch"]
      t0 = time.perf_counter()
      batches = input_pipeline.train_batches(
          train, global_batch, seed=c.seed, epoch=epoch, start_step=start_step,
          class_balanced=c.data.class_balanced)
      feed = input_pipeline.Prefetcher(batches, lambda b: runtime.to_global(b, setup.mesh),
                                       c.data.prefetch)
      bar = _progress(main, spe, start_step, f"epoch {epoch + 1}/{c.num_epochs}")
      # The epoch's loss sum so far (restored mid-epoch, so the mean is the same).
      losses_sum = jnp.asarray(meta.get("epoch_loss_sum", 0.0), jnp.float32)
      n_steps = start_step
      finite = jnp.array(True)
      last_log = time.perf_counter()
      for i, batch in enumerate(feed, start=start_step):
        state, m = train_step(state, batch)
        losses_sum = losses_sum + m["loss"]
        finite = finite & jnp.isfinite(m["loss"])
        n_steps += 1
        step = int(state["step"]) if (i + 1) % c.log_every_steps == 0 else None
        if step is not None:
          _check_finite(finite, ckpt, workdir)
          now = time.perf_counter()
          ips = c.log_every_steps * global_batch / (now - last_log)
          last_log = now
          logger.write(step, train_loss=float(m["loss"]), grad_norm=float(m["grad_norm"]),
                       lr=float(make_schedule(c, spe)(step)), images_per_s=ips)
          if bar is not None:
            bar.set_postfix(loss=f"{float(m['loss']):.4f}", img_s=f"{ips:.1f}")
        if bar is not None:
          bar.update(1)
        if c.checkpoint_every_steps and (i + 1) % c.checkpoint_every_steps == 0 \
            and i + 1 < spe:
          _check_finite(finite, ckpt, workdir)
          meta.update(step_in_epoch=i + 1, epoch_loss_sum=float(losses_sum))
          save()
      if bar is not None:
        bar.close()
      _check_finite(finite, ckpt, workdir)
      train_seconds = time.perf_counter() - t0
      wait = feed.wait_seconds
      val = evaluate_split(setup, state["params"], "validation", predict_fn)
      vf1 = val["video"]["macro_f1"]
      improved = stopper.update(vf1, epoch)
      record = {"epoch": epoch + 1, "train_loss": float(losses_sum) / max(n_steps, 1),
                "val_macro_f1": vf1, "val_uar": val["video"]["uar"],
                "val_accuracy": val["video"]["accuracy"],
                "val_frame_macro_f1": val["frame"]["macro_f1"],
                "seconds": time.perf_counter() - t0,
                "input_wait_fraction": wait / max(train_seconds, 1e-9),
                "images_per_s": (n_steps - start_step) * global_batch / max(train_seconds, 1e-9)}
      history.append(record)
      logger.write(int(state["step"]), **{k: v for k, v in record.items() if k != "epoch"},
                   epoch=epoch + 1)
      _say(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, val macro-F1 {vf1:.4f} "
           f"(UAR {record['val_uar']:.4f}){' *best*' if improved else ''}, "
           f"{record['images_per_s']:.1f} img/s, input wait "
           f"{100 * record['input_wait_fraction']:.1f}%")
      epoch += 1
      meta.update(epoch=epoch, step_in_epoch=0, epoch_loss_sum=0.0, history=history,
                  early_stopping=dataclasses.asdict(stopper))
      if stopper.should_stop:
        _say(f"Early stop: no better validation macro-F1 for {c.patience} epochs "
             f"(best {stopper.best:.4f} at epoch {stopper.best_epoch + 1}).")
      save(best=improved)
      if on_epoch is not None:
        on_epoch(record)
    ckpt.wait()

    # Test the best checkpoint.
    restored = ckpt.restore_best(jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), state))
    best_state = restored[0] if restored is not None else state
    results = {split: evaluate_split(setup, best_state["params"], split, predict_fn)
               for split in ("validation", "test")}
  finally:
    logger.close()
    ckpt.close()
  out = _report(workdir, c, results, meta)
  return out


def _report(workdir: pathlib.Path, c, results: dict, meta: dict) -> dict:
  stop = meta["early_stopping"]
  best_epoch = stop["best_epoch"] + 1 if stop["best_epoch"] >= 0 else None
  extra = {"epochs_run": meta["epoch"], "history": meta["history"]}
  if runtime.is_main_process():
    evaluate.write_report(workdir, results, best_epoch=best_epoch, config=c.to_dict(),
                          history=meta["history"], extra=extra,
                          title=f"{c.model.name} {c.data.method.upper()} "
                                f"{c.data.phase.upper()} ({workdir.name})")
    t = results["test"]["video"]
    lo, hi = t["macro_f1_ci"]
    _say("\n".join([
        "",
        f"== {c.model.name} {c.data.method.upper()} {c.data.phase.upper()} ==",
        f"best epoch {best_epoch} of {meta['epoch']} "
        f"(validation macro-F1 {stop['best']:.4f})",
        f"test (video level, {results['test']['num_videos']} videos): macro-F1 "
        f"{t['macro_f1']:.4f} [{lo:.4f}, {hi:.4f}], UAR {t['uar']:.4f}, "
        f"accuracy {t['accuracy']:.4f}",
        f"report: {workdir / 'report.md'}",
    ]))
  return json.loads((workdir / "metrics.json").read_text()) if (
      workdir / "metrics.json").exists() else {}


def _progress(enabled: bool, total: int, initial: int, desc: str):
  if not enabled:
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False,
              dynamic_ncols=True, file=sys.stderr)


def _check_finite(finite, ckpt, workdir):
  if not bool(finite):
    ckpt.wait()
    step = ckpt.latest.latest_step()
    raise NonFiniteLossError(
        "The training loss became NaN or inf. Nothing after the last good checkpoint "
        f"(step {step}) was saved, and it is kept in {workdir / 'checkpoints'}. Lower "
        "--config.optim.lr, set --config.optim.grad_clip=1.0, or check the input data; "
        "rerunning the same command resumes from that checkpoint.")


def main(argv):
  del argv
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS are chatty at INFO
  runtime.maybe_initialize_distributed()
  config = _FLAGS["config"].value
  workdir = _FLAGS["workdir"].value or os.path.join(
      "runs", f"{config.model.name}_{config.data.method}_{config.data.phase}")
  try:
    train_and_evaluate(config, workdir)
  except (ValueError, casme2.Casme2Error, FileNotFoundError, NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  runtime.reexec_with_tuned_malloc()
  _define_flags()
  app.run(main)
