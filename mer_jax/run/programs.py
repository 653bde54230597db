"""The compiled programs of a run, made once per process and shared by every run they fit.

A study's LOSO folds, seeds and cells, and tune's trials, differ in values the
steps take as arguments (`steps.run_values`: seed, class weights, learning
rate, weight decay) and in their data; what fixes the trace (the model and
its dropout rates, the augmentation, the loss's form, the schedule's shape,
the mesh) is the key of a process-level cache. A second run of the same key
reuses the jitted functions, so jax neither traces nor compiles them again
(`TRACES` counts the traces; tests read it).

Two ways through an epoch (`config.train_loop`):
- "step": one jitted step per batch, batches gathered on the host and fed by
  a thread (input_pipeline.Prefetcher); the only path on several devices.
- "scan": the training split's uint8 images on the device once per run,
  and `scan_steps` steps at a time as one `lax.scan` that gathers each batch
  on the device from the epoch's order (input_pipeline.epoch_indices, the
  host order of the "step" path), accumulating the loss and its finiteness
  inside. One process, one device. The split is padded to a power of two of
  rows and a chunk's unused steps are skipped (`lax.cond`), so LOSO folds of
  different sizes share one compiled program.
- "auto" (default): "scan" on one accelerator (GPU, TPU) when the padded split
  takes at most SCAN_MAX_BYTES, else "step". Not on CPU: XLA's CPU backend runs
  a scanned step at half the per-step loop's speed (the quickstart: 27 vs 58
  images/s, BENCHMARKS.md), so there the per-step loop is the default.
Both give the same batches in the same order; their parameters agree to float
rounding (XLA fuses a loop body differently), hence train_loop and
scan_steps are among the fields that do not change a run
(experiment.NEUTRAL_FIELDS).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.data.preprocess import Method
from mer_jax.plumbing import runtime
from mer_jax.plumbing.errors import UsageError
from mer_jax.run import sources, steps

TRAIN_LOOPS = ("auto", "step", "scan")
SCAN_MAX_BYTES = 1 << 30   # "auto": the padded training split on the device at most 1 GiB
TRACES: collections.Counter = collections.Counter()   # program name -> times traced

_CACHE: dict = {}


@dataclasses.dataclass
class Programs:
  """One key's jitted functions (see the module's docstring)."""
  model: Any
  init: Callable          # seed -> params
  fresh_state: Callable   # params -> the train state at step 0 (optimizer moments zero)
  train_step: Callable    # (state, batch, values) -> (state, metrics)
  train_chunk: Callable   # (state, images, labels, order, n, values, acc) -> (state, acc)
  predict: Callable       # (params, uint8 images) -> probabilities
  abstract_state: Any     # shapes, dtypes and sharding of the train state


def model_key(config, in_chans: int) -> tuple:
  """What fixes the model: its name and head (the label scheme's classes, a temporal head),
  input, dropout rates, dtype and remat."""
  m = config.model
  return (m.name, len(sources.classes(config.data)), m.get("temporal", "none"),
          m.get("temporal_hidden", 0), m.get("freeze_backbone", False), m.img_size, in_chans,
          m.drop_rate, m.drop_path_rate, m.dtype, m.get("remat", ""))


def trace_key(config, in_chans: int, steps_per_epoch: int, mesh) -> tuple:
  """What a run's compiled programs depend on beyond array shapes: runs with
  equal keys share them."""
  o, loss = config.optim, config.loss
  return (model_key(config, in_chans), tuple(sorted(config.aug.items())),
          Method.parse(config.data.method).is_flow, loss.name, loss.gamma,
          loss.label_smoothing, o.schedule, steps.schedule_steps(config, steps_per_epoch),
          o.b1, o.b2, o.grad_clip, scan_steps(config), mesh)


def scan_steps(config) -> int:
  n = config.get("scan_steps", 16)
  if n < 1:
    raise UsageError(f"scan_steps={n}: give the steps of one compiled loop, at least 1")
  return n


def get(config, in_chans: int, steps_per_epoch: int, mesh) -> Programs:
  """The programs of `config` (made on first use in this process)."""
  key = trace_key(config, in_chans, steps_per_epoch, mesh)
  if key not in _CACHE:
    _CACHE[key] = _make(config, in_chans, steps_per_epoch, mesh)
  return _CACHE[key]


def _counted(name: str, fn: Callable) -> Callable:
  def traced(*args):
    TRACES[name] += 1
    return fn(*args)
  return traced


def _make(config, in_chans: int, spe: int, mesh) -> Programs:
  model = steps.build_model(config, in_chans)
  rep = runtime.replicated(mesh)
  step = steps.make_train_step(model, config, spe,
                               is_flow=Method.parse(config.data.method).is_flow)
  dummy = steps.dummy_inputs(config, in_chans)
  init = jax.jit(_counted("init", lambda seed: model.init(jax.random.PRNGKey(seed),
                                                          *dummy)["params"]))
  # One program, not an eager op per moment leaf (~800 for PoolFormer-s12: 0.4 s a run
  # on a loaded CPU); the optimizer's init reads no value that differs between runs.
  tx = steps.make_optimizer(config, spe)
  return Programs(
      model=model, init=init,
      fresh_state=jax.jit(_counted("fresh_state", lambda p: steps.fresh_state(p, tx)),
                          out_shardings=rep),
      train_step=jax.jit(_counted("train_step", step), out_shardings=(rep, rep),
                         donate_argnums=0),
      train_chunk=jax.jit(_counted("train_chunk", make_train_chunk(step, scan_steps(config))),
                          donate_argnums=0),
      predict=jax.jit(_counted("predict", steps.make_predict_step(model, config.model.img_size)),
                      out_shardings=rep),
      abstract_state=steps.abstract_state(model, config, in_chans, tx, rep))


def make_train_chunk(step: Callable, length: int) -> Callable:
  """`length` steps of `step` as one lax.scan: (state, images [N,H,W,C] uint8,
  labels [N], order [length, B] rows of each step's batch, n, values, acc) ->
  (state, acc). Steps from `n` on are skipped; acc carries loss_sum and
  finite over the epoch, and the last step's loss and grad_norm."""
  def chunk(state, images, labels, order, n, values, acc):
    def body(carry, xs):
      i, rows = xs

      def run(carry):
        state, acc = carry
        batch = {"image": images[rows], "label": labels[rows],
                 "mask": jnp.ones(rows.shape, jnp.float32)}
        state, m = step(state, batch, values)
        return state, {"loss_sum": acc["loss_sum"] + m["loss"],
                       "finite": acc["finite"] & jnp.isfinite(m["loss"]),
                       "loss": m["loss"], "grad_norm": m["grad_norm"]}
      return jax.lax.cond(i < n, run, lambda c: c, carry), None

    (state, acc), _ = jax.lax.scan(body, (state, acc), (jnp.arange(length), order))
    return state, acc
  return chunk


def start_acc(loss_sum: float) -> dict:
  """The scan's accumulator at an epoch's (or a resumed epoch's) start."""
  return {"loss_sum": jnp.asarray(loss_sum, jnp.float32), "finite": jnp.array(True),
          "loss": jnp.zeros((), jnp.float32), "grad_norm": jnp.zeros((), jnp.float32)}


def padded_rows(n: int) -> int:
  """Rows of a split on the device: the next power of two, so splits of
  nearby sizes (LOSO folds) have one shape."""
  return 1 << max(0, int(n - 1).bit_length())


def use_scan(config, images: np.ndarray) -> bool:
  """config.train_loop resolved for a training split (see the module's docstring)."""
  loop = config.get("train_loop", "auto")
  if loop not in TRAIN_LOOPS:
    raise UsageError(f"Unknown train_loop {loop!r}; valid: {', '.join(TRAIN_LOOPS)}")
  one_device = jax.device_count() == 1
  if loop == "scan" and not one_device:
    raise UsageError(f"train_loop=scan runs on one device, not {jax.device_count()}: "
                     "use train_loop=step (or auto)")
  size = padded_rows(len(images)) * int(np.prod(images.shape[1:])) * images.dtype.itemsize
  return loop == "scan" or (loop == "auto" and one_device and jax.default_backend() != "cpu"
                            and size <= SCAN_MAX_BYTES)


def device_split(images: np.ndarray, labels: np.ndarray, mesh) -> tuple:
  """A training split on the device, padded with zero rows (never gathered)
  to `padded_rows`."""
  n = padded_rows(len(images))
  pad = lambda a: np.concatenate([a, np.zeros((n - len(a),) + a.shape[1:], a.dtype)])
  rep = runtime.replicated(mesh)
  return jax.device_put(pad(images), rep), jax.device_put(pad(labels), rep)
