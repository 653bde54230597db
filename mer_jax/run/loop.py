"""The run, top to bottom: train, early-stop, test and report (what `python -m mer_jax.train`,
the study and tune call).

One flat loop a reader can follow top to bottom (big_vision's way):
config -> (multi-host init) -> dataset (built on first use) -> mesh ->
model + ImageNet init -> optimizer -> restore if a checkpoint exists ->
epochs of jitted steps -> validation macro-F1 at the video level ->
checkpoints (latest + best) -> early stopping -> test of the best -> report.

The same loop runs on one CPU, N GPUs or many hosts: the batch is split on
the `data` axis of a Mesh of every device of every process, parameters are
replicated, and each process feeds its share of every global batch.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import pathlib
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.models import temporal
from mer_jax.plumbing import runtime
from mer_jax.plumbing.errors import UserError
from mer_jax.plumbing.progress import StepProgress
from mer_jax.run import (checkpointing, experiment, input_pipeline, programs, report, sequences,
                         sources, steps)
from mer_jax.run.workdir import hold


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss became NaN or inf; the last good checkpoint is kept."""


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


def _write_json(path: pathlib.Path, obj):
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2))
  tmp.replace(path)


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


class Finisher:
  """Finishes runs in a background thread while the caller trains the next one: a run's
  last checkpoint writes, its metrics.json and report (the study's cells; a LOSO fold of a
  small model spends ~1 s of its ~5 waiting on them: BENCHMARKS "Study scale"). One run at
  a time: handing over a run first waits for the one before, and raises its error if it
  failed. `close()` waits for the last. A run still finishing holds its workdir lock and
  has no metrics.json, so a killed study resumes it like any unfinished run."""

  def __init__(self):
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="finish")
    self._last = None

  def submit(self, finish) -> None:
    self.join()
    self._last = self._pool.submit(finish)

  def join(self) -> None:
    last, self._last = self._last, None
    if last is not None:
      last.result()

  def close(self) -> None:
    try:
      self.join()
    finally:
      self._pool.shutdown()


def train_and_evaluate(config, workdir: str, on_epoch=None, *, force: bool = False,
                       finisher: Finisher | None = None) -> dict | None:
  """Trains with early stopping, tests the best checkpoint, writes the report.

  Resumes from WORKDIR/checkpoints if present (a finished run is only
  re-tested; a larger num_epochs continues it unless it stopped early or the
  schedule decays over num_epochs). A workdir holding a run of another config
  (experiment.claim_workdir) stops with ConfigChanged, or with `force` is
  emptied first. A corrupt checkpoint is passed over for the newest intact one.
  Checkpoints: at an epoch's end when the last save is SAVE_EVERY_SECONDS (checkpointing)
  old or the run ends there, and every checkpoint_every_steps steps. `on_epoch(record)`, if
  given, is called with each epoch's history record (the tuner prunes from it by raising).
  Raises WorkdirBusy if another live run holds the workdir.
  Returns the metrics.json dict; with a `finisher` (one process only) the run's last
  checkpoint writes and report are handed to it once the test is done, and it returns None.
  """
  steps.check_method_fields(config)
  workdir = pathlib.Path(workdir).absolute()
  is_main = runtime.is_main_process()
  with contextlib.ExitStack() as held:
    if is_main:
      held.enter_context(hold(workdir, log=_say))
    experiment.claim_workdir(workdir, config, force=force, say=_say)
    finish = _train_and_evaluate(config, workdir, on_epoch, is_main)
    if finisher is None or jax.process_count() > 1:
      return finish()
    lock = held.pop_all()   # released by the finisher, once metrics.json is written

  def finish_and_release():
    with lock:
      finish()
  finisher.submit(finish_and_release)
  return None


def _train_and_evaluate(c, workdir: pathlib.Path, on_epoch, is_main: bool):
  """Trains and tests; returns the run's finish (wait for the last checkpoint writes,
  close, write metrics.json and the report), which returns the metrics.json dict."""
  # Data, model, mesh; the optimizer and loss from the training split.
  setup = experiment.make_setup(c, _say)
  train = setup.data["train"]
  global_batch = c.batch_size
  spe = input_pipeline.steps_per_epoch(max(len(train), global_batch), global_batch)
  schedule = steps.make_schedule(c, spe)
  prog = programs.get(c, setup.in_chans, spe, setup.mesh)
  rep = runtime.replicated(setup.mesh)
  values = jax.device_put(steps.run_values(
      c, np.bincount(train.labels, minlength=len(sources.classes(c.data)))), rep)
  if is_main:
    _write_json(workdir / "config.json", c.to_dict())

  # The state: restored from the newest intact checkpoint, else fresh (ImageNet or random).
  ckpt = checkpointing.Checkpoints(workdir, c.checkpoint_keep)
  restored = ckpt.restore_latest(prog.abstract_state, say=_say, discard=True)
  if restored is not None:
    state, meta = restored.state, restored.meta
    _say(f"Resuming from step {int(state['step'])} (epoch {meta['epoch']}, "
         f"step {meta['step_in_epoch']} of it)")
  else:
    params = steps.init_params(c, setup.in_chans, prog.init, _say)
    state = prog.fresh_state(jax.device_put(params, rep))   # replicated as it goes in
    meta = {"epoch": 0, "step_in_epoch": 0, "history": [],
            "early_stopping": dataclasses.asdict(EarlyStopping(c.patience, c.min_delta)),
            "seed": c.seed}
  stopper = EarlyStopping(**meta["early_stopping"])
  history = meta["history"]

  video = sequences.is_temporal(c)   # batches of whole videos: the per-step path
  predict_fn = experiment.jit_predict(setup) if video else prog.predict
  scan = not video and programs.use_scan(c, train.images)
  on_device = programs.device_split(train.images, train.labels, setup.mesh) if scan else None
  best_params = None   # the best epoch's params of this process: tested without a restore
  logger = _Logger(workdir, is_main)
  unit = "videos of whole sequences" if sequences.is_temporal(c) else "frames"
  _say(f"{temporal.spec_of(c.model)} {c.data.method.upper()} {c.data.phase.upper()}: "
       f"{len(train)} training {unit} ({train.num_videos} videos), "
       f"{len(setup.data['validation'])} validation, "
       f"{len(setup.data['test'])} test; {jax.device_count()} devices in "
       f"{jax.process_count()} process(es); global batch {global_batch}, {spe} steps/epoch")

  pending = []   # (step, state, meta) of an improved epoch not saved yet: at most one
  last_save = [time.perf_counter()]

  def save(best=False):
    if pending and not best:   # a newer best supersedes it
      ckpt.save(*pending[0], latest=False, best=True)
    pending.clear()
    ckpt.save(int(state["step"]), state, meta, best=best)
    last_save[0] = time.perf_counter()

  # The last epoch's save waits until the run is tested: with the study's Finisher it is
  # written while the next run trains. Every way out of the run still makes it.
  final = []   # [whether the last epoch is the best], once training has ended

  def flush_final():
    if final:
      save(best=final.pop())

  feed = bar = None  # the epoch's input thread and progress bar, closed however it ends
  try:
    # Epochs until early stopping: train, validate, checkpoint.
    epoch = meta["epoch"]
    while not stopper.should_stop and epoch < c.num_epochs:
      start_step = meta["step_in_epoch"]
      t0 = time.perf_counter()
      bar = StepProgress(spe, start_step, f"epoch {epoch + 1}/{c.num_epochs}", enabled=is_main)
      # The epoch's loss sum so far (restored mid-epoch, so the mean is the same).
      losses_sum = jnp.asarray(meta.get("epoch_loss_sum", 0.0), jnp.float32)
      finite = jnp.array(True)
      last_log = [time.perf_counter(), start_step]

      def done(i: int, n: int, m):
        """Steps up to `i` are dispatched, the last `n` of them just now: log, checkpoint."""
        if i // c.log_every_steps > (i - n) // c.log_every_steps:
          _check_finite(finite, ckpt, workdir)
          step, now = int(state["step"]), time.perf_counter()
          ips = (i - last_log[1]) * global_batch / (now - last_log[0])
          last_log[:] = now, i
          logger.write(step, train_loss=float(m["loss"]), grad_norm=float(m["grad_norm"]),
                       lr=float(schedule(step)), images_per_s=ips)
          bar.set_postfix(loss=f"{float(m['loss']):.4f}", img_s=f"{ips:.1f}")
        if c.checkpoint_every_steps and i % c.checkpoint_every_steps == 0 and i < spe:
          _check_finite(finite, ckpt, workdir)
          meta.update(step_in_epoch=i, epoch_loss_sum=float(losses_sum))
          save()

      if scan:   # scan_steps steps a call, each chunk ending at a checkpoint boundary
        order = input_pipeline.epoch_indices(train, global_batch, seed=c.seed, epoch=epoch,
                                             class_balanced=c.data.class_balanced)
        acc = programs.start_acc(meta.get("epoch_loss_sum", 0.0))
        length, i = programs.scan_steps(c), start_step
        while i < spe:
          end = min(i + length, spe)
          if c.checkpoint_every_steps:
            end = min(end, (i // c.checkpoint_every_steps + 1) * c.checkpoint_every_steps)
          rows = np.zeros((length, global_batch), np.int32)
          rows[:end - i] = order[i:end]
          state, acc = prog.train_chunk(state, *on_device, rows, np.int32(end - i), values,
                                        acc)
          losses_sum, finite = acc["loss_sum"], acc["finite"]
          for _ in range(end - i):
            bar.dispatched(acc["loss"])
          done(end, end - i, acc)
          i = end
        wait_seconds = 0.0
      else:
        feeder = sequences.train_batches if video else input_pipeline.train_batches
        batches = feeder(train, global_batch, seed=c.seed, epoch=epoch, start_step=start_step,
                         class_balanced=c.data.class_balanced)
        feed = input_pipeline.Prefetcher(batches, lambda b: runtime.to_global(b, setup.mesh),
                                         c.data.prefetch)
        for i, batch in enumerate(feed, start=start_step):
          state, m = prog.train_step(state, batch, values)
          losses_sum = losses_sum + m["loss"]
          finite = finite & jnp.isfinite(m["loss"])
          bar.dispatched(m["loss"])
          done(i + 1, 1, m)
        wait_seconds = feed.wait_seconds
      bar.finish()
      _check_finite(finite, ckpt, workdir)
      n_steps = bar.completed
      train_seconds = time.perf_counter() - t0
      val = experiment.evaluate_split(setup, state["params"], "validation", predict_fn)
      vf1 = val["video"]["macro_f1"]
      improved = stopper.update(vf1, epoch)
      if c.get("selection", "validation") == "test_fold_best_epoch":
        # Recorded for the study's measure of the leaky choice; never read by this run.
        test = experiment.evaluate_split(setup, state["params"], "test", predict_fn)
        if is_main:
          report.write_epoch_predictions(workdir, epoch + 1, test)
      record = epoch_record(epoch, val, losses_sum, n_steps, start_step, global_batch, t0,
                            train_seconds, wait_seconds)
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
      if stopper.should_stop or epoch >= c.num_epochs:
        final[:] = [improved]   # the run's last save: flush_final(), after the test
        if improved:   # no step follows to donate them
          best_params = state["params"]
      elif time.perf_counter() - last_save[0] >= checkpointing.SAVE_EVERY_SECONDS:
        save(best=improved)
        if improved:   # a copy: the next step donates the state's buffers
          best_params = jax.tree.map(jnp.copy, state["params"])
      elif improved:   # saved as the best with the next save
        pending[:] = [(int(state["step"]), jax.tree.map(jnp.copy, state),
                       {**meta, "history": list(history)})]
        best_params = pending[0][1]["params"]
      if improved:
        best_val = val
        best_step = int(state["step"])
      if on_epoch is not None:
        on_epoch(record)

    # Test the best checkpoint: still in memory if this process trained it (the
    # same arrays it saved), else read back.
    if best_params is not None:
      best = checkpointing.Restored({"params": best_params}, meta, "best", best_step)
      results = {"validation": best_val}
    else:
      flush_final()   # the final state is a candidate when no best was saved
      ckpt.wait()
      best = ckpt.restore_best(jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), state), say=_say)
      if best is None:   # no epoch improved on -inf (a NaN metric): the final state
        best = checkpointing.Restored(state, meta, "latest", int(state["step"]))
      results = {"validation": experiment.evaluate_split(setup, best.state["params"],
                                                         "validation", predict_fn)}
    results["test"] = experiment.evaluate_split(setup, best.state["params"], "test", predict_fn)
  except BaseException:
    try:
      flush_final()
    finally:
      logger.close()
      ckpt.close()
    raise
  finally:
    if feed is not None:
      feed.close()
    if bar is not None:
      bar.close()

  def finish() -> dict:
    try:
      flush_final()
      ckpt.wait()   # metrics.json comes after the last saves
    finally:
      logger.close()
      ckpt.close()
    return report.finish_run(workdir, c, results, meta, best.record(), say=_say,
                             dataset=setup.dataset,
                             train_videos=setup.data["train"].num_videos)
  return finish


def epoch_record(epoch: int, val: dict, loss_sum, n_steps: int, start_step: int, batch: int,
                 t0: float, train_seconds: float, wait_seconds: float) -> dict:
  """One epoch's record of metrics.json's `history` (a run alone, or one of a program's
  runs: mer_jax.run.multirun): its mean train loss over `n_steps`, validation scores,
  seconds since `t0`, input wait and images/s over the steps trained from `start_step`."""
  return {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(n_steps, 1),
          "val_macro_f1": val["video"]["macro_f1"], "val_uar": val["video"]["uar"],
          "val_accuracy": val["video"]["accuracy"],
          "val_frame_macro_f1": val["frame"]["macro_f1"],
          "seconds": time.perf_counter() - t0,
          "input_wait_fraction": wait_seconds / max(train_seconds, 1e-9),
          "images_per_s": (n_steps - start_step) * batch / max(train_seconds, 1e-9)}


def _check_finite(finite, ckpt, workdir):
  if not bool(finite):
    ckpt.wait()
    step = ckpt.latest.latest_step()
    raise NonFiniteLossError(
        "The training loss became NaN or inf. Nothing after the last good checkpoint "
        f"(step {step}) was saved, and it is kept in {workdir / 'checkpoints'}. Lower "
        "--config.optim.lr, set --config.optim.grad_clip=1.0, or check the input data; "
        "rerunning the same command resumes from that checkpoint.")
