"""The pieces of a run that train, evaluate, tune, study, bench and predict share.

A config's model, its optimizer and loss, the jitted train and predict steps
and the shapes of the train state a checkpoint is restored into. Plain
functions of a config: nothing here reads flags, a dataset or a workdir.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mer_jax.run import input_pipeline
from mer_jax.run import losses
from mer_jax import models
from mer_jax.plumbing import runtime
from mer_jax.data import splits
from mer_jax.data.casme2 import EMOTIONS
from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method
from mer_jax.plumbing.errors import UsageError
from mer_jax.models.layers import REMAT_POLICIES

PROTOCOLS = ("paper", "loso")
DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "cosine")


def _valid(field: str, value, valid) -> None:
  if value not in valid:
    raise UsageError(f"Unknown {field} {value!r}; valid: {', '.join(map(str, valid))}")


def check_config(config) -> None:
  """Unknown model/method/phase/loss/protocol/... -> ValueError naming the
  field and its valid values; batch sizes must split over every device."""
  models.family(config.model.name)
  Method.parse(config.data.method)
  Phase.parse(config.data.phase)
  losses.Loss.parse(config.loss.name)
  _valid("data.protocol", config.data.protocol, PROTOCOLS)
  splits.check_split(config.data.protocol, config.data.get("split", "video"),
                     config.data.get("split_seed", splits.PAPER_SEED))  # before a build
  _valid("model.dtype", config.model.dtype, DTYPES)
  _valid("optim.schedule", config.optim.schedule, SCHEDULES)
  if config.model.get("remat", "") not in REMAT_POLICIES:
    raise UsageError(f"Unknown model.remat {config.model.remat!r}; valid: "
                     f"{', '.join(repr(r) for r in REMAT_POLICIES)}")
  n = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if config[field] % n:
      raise UsageError(f"{field}={config[field]} must be divisible by the {n} devices "
                       f"(all processes); use a multiple of {n}.")


def check_method_fields(config) -> None:
  """Training fields that contradict each other -> UsageError (one line): M3
  flow with an augmentation that has no rule for vectors (rotation, brightness,
  contrast; the flip and the crop have one), and class-balanced sampling with a
  class-weighted loss (focal's alpha and weighted_ce both weight by inverse
  frequency: two corrections of the same imbalance). Called where training
  starts (train, tune), not in `check_config`: evaluate and predict read a
  finished run's config, whose training fields they cannot change."""
  if Method.parse(config.data.method).is_flow and config.aug.enabled:
    on = [f"aug.{k}={config.aug[k]}" for k in ("rotate_deg", "brightness", "contrast")
          if config.aug[k]]
    if on:
      raise UsageError(
          f"{', '.join(on)} with data.method=m3: a flow image's codes are motion vectors "
          "(rotation would turn the pixels, not the vectors; brightness and contrast would "
          "change the motion); set " + ", ".join(f"{o.split('=')[0]}=0" for o in on))
  loss = losses.Loss.parse(config.loss.name)
  if config.data.class_balanced and loss is not losses.Loss.CE:
    raise UsageError(
        f"data.class_balanced=True with loss.name={loss.value}, which weights classes by "
        "inverse frequency: two corrections of the same imbalance; use loss.name=ce or "
        "data.class_balanced=False")


def build_model(config, in_chans: int):
  """The config's Flax model for the 7 emotions."""
  return models.create_model(
      config.model.name, num_classes=len(EMOTIONS), img_size=config.model.img_size,
      in_chans=in_chans, drop_rate=config.model.drop_rate,
      drop_path_rate=config.model.drop_path_rate, dtype=jnp.dtype(config.model.dtype),
      remat=config.model.get("remat", ""))  # runs from before remat existed have none


def dummy_images(config, in_chans: int):
  return jnp.zeros((1, config.model.img_size, config.model.img_size, in_chans), jnp.float32)


def init_params(config, model, in_chans: int, log=print):
  """ImageNet weights through the converter (cached), or random init."""
  if config.init.weights:
    from mer_jax.models import weights
    log(f"Initialising from {config.init.weights}")
    variables = weights.load_pretrained(
        config.model.name, config.init.weights, img_size=config.model.img_size,
        in_chans=in_chans, num_classes=len(EMOTIONS), seed=config.seed,
        cache_dir=config.init.cache_dir or None)
    return variables["params"]
  return jax.jit(model.init)(jax.random.PRNGKey(config.seed),
                             dummy_images(config, in_chans))["params"]


def make_schedule(config, steps_per_epoch: int):
  o = config.optim
  total = max(1, config.num_epochs * steps_per_epoch)
  warmup = int(o.warmup_epochs * steps_per_epoch)
  _valid("optim.schedule", o.schedule, SCHEDULES)
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, max(total, warmup + 1))
  if warmup:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, warmup), optax.constant_schedule(o.lr)], [warmup])
  return optax.constant_schedule(o.lr)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """AdamW as the paper (PyTorch's AdamW: decoupled decay on every parameter)."""
  o = config.optim
  tx = optax.adamw(make_schedule(config, steps_per_epoch), b1=o.b1, b2=o.b2,
                   weight_decay=o.weight_decay)
  if o.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx


def make_loss_fn(config, class_counts: np.ndarray):
  """(logits, labels, mask) -> scalar, with the inverse-frequency class
  weights of the training split (focal: as per-class alpha)."""
  return loss_fn_of_weights(config, jnp.asarray(losses.class_weights(np.asarray(class_counts))))


def loss_fn_of_weights(config, weights):
  """`make_loss_fn` with the class weights given (an array, possibly traced:
  mer_jax.run.multirun passes each run's own through vmap)."""
  loss, ls = losses.Loss.parse(config.loss.name), config.loss.label_smoothing
  if loss is losses.Loss.FOCAL:
    return functools.partial(losses.focal_loss, alpha=weights, gamma=config.loss.gamma,
                             label_smoothing=ls)
  return functools.partial(losses.weighted_cross_entropy,
                           weights=weights if loss is losses.Loss.WEIGHTED_CE else None,
                           label_smoothing=ls)


def make_train_step(model, tx, loss_fn, aug_cfg, img_size: int, seed: int, *,
                    is_flow: bool):
  """One step: augment on device -> forward -> loss -> AdamW. The step's RNG is
  a function of (seed, step), so a resumed run draws the same numbers. is_flow:
  the images are M3 flow (`Method.is_flow`), augmented as vectors."""

  def step(state, batch):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
    aug_rng, drop_rng = jax.random.split(rng)
    images = input_pipeline.augment(aug_rng, batch["image"], aug_cfg, img_size,
                                    is_flow=is_flow)

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
  """(params, uint8 images) -> class probabilities, float32."""
  def predict(params, images):
    x = input_pipeline.preprocess_eval(images, img_size)
    logits = model.apply({"params": params}, x, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return predict


def jit_predict(model, img_size: int, mesh):
  """The predict step jitted for a mesh, its output on every process."""
  return jax.jit(make_predict_step(model, img_size), out_shardings=runtime.replicated(mesh))


def fresh_state(params, tx) -> dict:
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def abstract_state(model, config, in_chans: int, tx, sharding):
  """Shapes, dtypes and sharding of the train state {step, params, opt_state},
  what a checkpoint is restored into (converted weights have the model's own
  structure, so random-init shapes serve every run)."""
  def shapes():
    params = model.init(jax.random.PRNGKey(0), dummy_images(config, in_chans))["params"]
    return fresh_state(params, tx)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      jax.eval_shape(shapes))
