"""K runs in one program: parameters and optimizer state stacked on a `run` axis.

`train_and_evaluate_many(configs, workdirs)` trains K runs whose configs agree
but for RUN_FIELDS (seed, LOSO fold) with one jitted train step vmapped over
the run axis, then writes each run's directory exactly as
`loop.train_and_evaluate` would (config.json, checkpoints, metrics.json,
predictions_<split>.csv, report.md), so evaluate, predict and the study's
analysis read them unchanged.

Per run: its own data (a LOSO fold's training split), its own epoch order
(`input_pipeline.train_batches` with its seed), its own augmentation and
dropout RNG (steps.make_train_step with its seed), its own class weights (an
argument of the step), its own early stopping and its own checkpoints.

Uneven training sets (LOSO folds): a round trains every active run for one
epoch of its own; the round has as many steps as the longest of them, and a
run whose epoch has fewer steps (or that has stopped early, or finished its
epochs) gets masked steps: its whole state (step counter, parameters,
optimizer state) is kept as it was, so its step sequence is exactly the one
it takes alone (masking, not cycling: cycling would change its epochs).
Inside a step every example is real (training drops the last incomplete
batch, as alone).

Checkpoints: each run saves its own (checkpointing.Checkpoints in its
workdir, unstacked) at the end of each of its epochs, the same files a run
trained alone saves; so an interrupted program resumes (each run from its own
latest checkpoint, possibly at different epochs), a single run can be resumed
alone, and the best state of a stopped run is its best checkpoint. Mid-epoch
checkpoints (checkpoint_every_steps) are not written; one restored mid-epoch
continues from its step. K orbax saves per round instead of one stacked save:
the price of directories that every other program reads as they are.

Equality with alone: the same numbers go in, but XLA compiles a batched
program, whose reductions may round differently; tests/test_multirun.py
bounds the difference. The run axis is replicated on every device (the batch
of each run is split over the `data` axis, as alone); sharding the run axis
over the mesh is not done.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mer_jax.data.preprocess import Method
from mer_jax.plumbing import runtime
from mer_jax.plumbing.errors import UsageError
from mer_jax.run import checkpointing, experiment, input_pipeline, report, sequences, sources, steps
from mer_jax.run.loop import EarlyStopping, NonFiniteLossError, epoch_record
from mer_jax.run.workdir import hold

# The fields in which the runs of one program may differ.
RUN_FIELDS = ("seed", "data.fold")


def _say(*args):
  if runtime.is_main_process():
    print(*args, flush=True)


def check_program(configs) -> None:
  """UsageError unless every config equals the first but for RUN_FIELDS (and
  the fields that change no numbers, experiment.NEUTRAL_FIELDS)."""
  if not configs:
    raise UsageError("a program needs at least one run")
  if sequences.is_temporal(configs[0]):
    raise UsageError("a temporal head trains one run at a time: use --runs_per_program 1")
  if configs[0].get("selection", "validation") == "test_fold_best_epoch":
    raise UsageError("selection=test_fold_best_epoch records each epoch's test predictions, "
                     "which runs in one program do not: use --runs_per_program 1")
  first = configs[0].to_dict()
  for c in configs[1:]:
    changes = experiment.config_changes(first, c.to_dict(),
                                        ignore=RUN_FIELDS + experiment.NEUTRAL_FIELDS)
    if changes:
      raise UsageError(f"runs of one program may differ only in {', '.join(RUN_FIELDS)}; "
                       f"these differ in {'; '.join(changes)}")


def group_runs(configs, k: int) -> list[list[int]]:
  """Indices of `configs` in programs of at most k runs each: runs of one
  program differ only in RUN_FIELDS (check_program); in first-seen order."""
  groups: list[list[int]] = []
  ignore = RUN_FIELDS + experiment.NEUTRAL_FIELDS
  for i, c in enumerate(configs):
    mate = next((g for g in groups if not experiment.config_changes(
        configs[g[0]].to_dict(), c.to_dict(), ignore=ignore)), None)
    if mate is None:
      groups.append([i])
    else:
      mate.append(i)
  return [g[j:j + k] for g in groups for j in range(0, len(g), k)]


def stack(trees):
  """[tree] -> one tree of arrays with a leading run axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, r: int):
  """Run r's tree of a stacked one."""
  return jax.tree.map(lambda a: a[r], tree)


def make_multi_step(model, config, steps_per_epoch: int, *, is_flow: bool):
  """The vmapped train step: (states, batches, values, active) -> (states, metrics),
  every argument with a leading run axis (`values`: each run's steps.run_values, its
  seed and class weights). A run with active False keeps its state unchanged (a
  masked step)."""
  step = steps.make_train_step(model, config, steps_per_epoch, is_flow=is_flow)

  def one(state, batch, values, active):
    new, m = step(state, batch, values)
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state), m

  return jax.vmap(one)


@dataclasses.dataclass
class _Run:
  """One run's host-side bookkeeping."""
  config: object
  workdir: object
  setup: experiment.Setup
  ckpt: checkpointing.Checkpoints
  meta: dict
  stopper: EarlyStopping
  spe: int
  failed: bool = False

  @property
  def active(self) -> bool:
    return (not self.failed and not self.stopper.should_stop
            and self.meta["epoch"] < self.config.num_epochs)


def _setups(configs):
  """One experiment.Setup per config; runs on the same data share its arrays and the model."""
  by_data, out = {}, []
  for c in configs:
    key = (c.data.protocol, c.data.fold, c.data.get("split", "video"),
           c.data.get("split_seed", 0))
    if key not in by_data:
      by_data[key] = experiment.make_setup(c, _say)
    s = by_data[key]
    out.append(dataclasses.replace(s, config=c,
                                   model=out[0].model if out else s.model))
  return out


def shared_optimizer(configs, spes):
  """steps.make_optimizer of the first run, if every run's learning-rate
  schedule gives the same value at every step any of them takes; else UsageError
  (a schedule over num_epochs * steps_per_epoch differs between folds of
  different sizes)."""
  total = max(c.num_epochs * s for c, s in zip(configs, spes)) + 1
  ref = np.asarray(jax.vmap(steps.make_schedule(configs[0], spes[0]))(jnp.arange(total)))
  for c, s in zip(configs[1:], spes[1:]):
    if not np.array_equal(ref, np.asarray(jax.vmap(steps.make_schedule(c, s))(
        jnp.arange(total)))):
      raise UsageError(
          f"the runs of one program train {sorted(set(spes))} steps per epoch and "
          f"optim.schedule={configs[0].optim.schedule} with warmup_epochs="
          f"{configs[0].optim.warmup_epochs} gives them different learning rates; use "
          "optim.schedule=constant with optim.warmup_epochs=0, or one run per program")
  return steps.make_optimizer(configs[0], spes[0])


def train_and_evaluate_many(configs, workdirs, *, force: bool = False) -> list[dict]:
  """Trains the K runs of `configs` (check_program) in one program, each in
  its workdir; returns their metrics.json dicts in order. Holds every workdir
  (WorkdirBusy if another process holds one) and claims it as
  loop.train_and_evaluate does (ConfigChanged, or with `force` emptied)."""
  check_program(configs)
  for c in configs:
    steps.check_method_fields(c)
  workdirs = [pathlib.Path(w).absolute() for w in workdirs]
  if len(set(workdirs)) != len(workdirs):
    raise UsageError("each run of a program needs its own workdir")
  with contextlib.ExitStack() as held:
    for w, c in zip(workdirs, configs):
      if runtime.is_main_process():
        held.enter_context(hold(w, log=_say))
      experiment.claim_workdir(w, c, force=force, say=_say)
    return _train_many(configs, workdirs, held)


def _train_many(configs, workdirs, held) -> list[dict]:
  c0 = configs[0]
  setups = _setups(configs)
  model, mesh, in_chans = setups[0].model, setups[0].mesh, setups[0].in_chans
  batch = c0.batch_size
  spes = [input_pipeline.steps_per_epoch(max(len(s.data["train"]), batch), batch)
          for s in setups]
  tx = shared_optimizer(configs, spes)
  rep = runtime.replicated(mesh)
  abstract = steps.abstract_state(model, c0, in_chans, tx, rep)
  dummy = steps.dummy_inputs(c0, in_chans)
  init = jax.jit(lambda seed: model.init(jax.random.PRNGKey(seed), *dummy)["params"])
  runs, states = [], []
  for c, w, s, spe in zip(configs, workdirs, setups, spes):
    if runtime.is_main_process():
      (w / "config.json").write_text(json.dumps(c.to_dict(), indent=2))
    ckpt = checkpointing.Checkpoints(w, c.checkpoint_keep)
    held.callback(ckpt.close)
    restored = ckpt.restore_latest(abstract, say=_say, discard=True)
    if restored is not None:
      state, meta = restored.state, restored.meta
      _say(f"{w.name}: resuming from step {int(state['step'])} (epoch {meta['epoch']})")
    else:
      state = jax.device_put(steps.fresh_state(steps.init_params(c, in_chans, init, _say), tx),
                             rep)
      meta = {"epoch": 0, "step_in_epoch": 0, "history": [],
              "early_stopping": dataclasses.asdict(EarlyStopping(c.patience, c.min_delta)),
              "seed": c.seed}
    runs.append(_Run(c, w, s, ckpt, meta, EarlyStopping(**meta["early_stopping"]), spe))
    states.append(state)
  k = len(runs)
  state = jax.device_put(stack(states), rep)
  del states
  n_classes = len(sources.classes(c0.data))
  values = jax.device_put(stack([steps.run_values(c, np.bincount(
      s.data["train"].labels, minlength=n_classes)) for c, s in zip(configs, setups)]), rep)
  step_fn = jax.jit(make_multi_step(model, c0, spes[0],
                                    is_flow=Method.parse(c0.data.method).is_flow),
                    out_shardings=(rep, rep), donate_argnums=0)
  predict_fn = experiment.jit_predict(setups[0])
  batch_sharding = NamedSharding(mesh, P(None, "data"))
  _say(f"{c0.model.name} {c0.data.method.upper()} {c0.data.phase.upper()}: {k} runs in one "
       f"program ({', '.join(w.name for w in workdirs)}); {spes} steps/epoch; global batch "
       f"{batch} each")

  while any(r.active for r in runs):
    t0 = time.perf_counter()
    live = [r.active for r in runs]
    starts = [r.meta["step_in_epoch"] if a else 0 for r, a in zip(runs, live)]
    n_steps = [r.spe - s if a else 0 for r, s, a in zip(runs, starts, live)]
    feed = input_pipeline.Prefetcher(
        _round_batches(runs, live, starts, max(n_steps)),
        lambda b: {key: jax.make_array_from_process_local_data(
            batch_sharding if key != "active" else rep, v) for key, v in b.items()},
        c0.data.prefetch)
    loss_sum = jnp.asarray([r.meta.get("epoch_loss_sum", 0.0) if a else 0.0
                            for r, a in zip(runs, live)], jnp.float32)
    finite = jnp.ones((k,), bool)
    with feed:
      for b in feed:
        active = b.pop("active")
        state, m = step_fn(state, b, values, active)
        loss_sum = loss_sum + jnp.where(active, m["loss"], 0.0)
        finite = finite & (~active | jnp.isfinite(m["loss"]))
    finite, loss_sum = np.asarray(finite), np.asarray(loss_sum)
    train_seconds = time.perf_counter() - t0
    for i, r in enumerate(runs):
      if not live[i]:
        continue
      if not finite[i]:
        r.failed = True
        _say(f"{r.workdir.name}: the training loss became NaN or inf; stopped, its last "
             "good checkpoint kept")
        continue
      _end_epoch(r, unstack(state, i), predict_fn, loss_sum[i], n_steps[i] + starts[i],
                 starts[i], t0, train_seconds, feed.wait_seconds)

  results = []
  for r in runs:
    r.ckpt.wait()
  failed = [r.workdir for r in runs if r.failed]
  for r in runs:
    if r.failed:
      continue
    best = r.ckpt.restore_best(abstract, say=_say)
    if best is None:
      best = r.ckpt.restore_latest(abstract, say=_say)
    out = {split: experiment.evaluate_split(r.setup, best.state["params"], split, predict_fn)
           for split in ("validation", "test")}
    results.append(report.finish_run(r.workdir, r.config, out, r.meta, best.record(),
                                     say=_say, dataset=r.setup.dataset,
                                     train_videos=r.setup.data["train"].num_videos))
  if failed:
    raise NonFiniteLossError(
        f"The training loss became NaN or inf in {', '.join(map(str, failed))}; their last "
        "good checkpoints are kept (the other runs finished). Lower --config.optim.lr, set "
        "--config.optim.grad_clip=1.0, or check the input data.")
  return results


def _round_batches(runs, live, starts, n):
  """The round's stacked batches {image, label, mask: [K, B, ...], active: [K]}: each live
  run's own epoch (input_pipeline.train_batches) from its start step, zeros once it ends."""
  its = [input_pipeline.train_batches(
      r.setup.data["train"], r.config.batch_size, seed=r.config.seed, epoch=r.meta["epoch"],
      start_step=s, class_balanced=r.config.data.class_balanced) if a else iter(())
         for r, a, s in zip(runs, live, starts)]
  blank = None
  try:
    for _ in range(n):
      got = [next(it, None) for it in its]
      blank = blank or {k: np.zeros_like(v) for k, v in next(g for g in got if g).items()}
      yield {**{k: np.stack([(g or blank)[k] for g in got]) for k in blank},
             "active": np.array([g is not None for g in got])}
  finally:
    for it in its:
      if hasattr(it, "close"):
        it.close()


def _end_epoch(r: _Run, state, predict_fn, loss_sum, n_done, start, t0, train_seconds, wait):
  """Validation, early stopping, history and the checkpoint of one run's finished epoch
  (loop.train_and_evaluate's, record for record)."""
  c, meta, epoch = r.config, r.meta, r.meta["epoch"]
  val = experiment.evaluate_split(r.setup, state["params"], "validation", predict_fn)
  vf1 = val["video"]["macro_f1"]
  improved = r.stopper.update(vf1, epoch)
  record = epoch_record(epoch, val, loss_sum, n_done, start, c.batch_size, t0, train_seconds,
                        wait)
  meta["history"].append(record)
  _say(f"{r.workdir.name} epoch {epoch + 1}: loss {record['train_loss']:.4f}, val macro-F1 "
       f"{vf1:.4f}{' *best*' if improved else ''}")
  meta.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss_sum=0.0,
              early_stopping=dataclasses.asdict(r.stopper))
  r.ckpt.save(int(state["step"]), state, meta, best=improved)
