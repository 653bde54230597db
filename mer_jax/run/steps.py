"""The pieces of a run that train, evaluate, tune, study, bench and predict share.

A config's model, its optimizer and loss, the jitted train and predict steps
and the shapes of the train state a checkpoint is restored into. Plain
functions of a config: nothing here reads flags, a dataset or a workdir.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax

from mer_jax.run import input_pipeline
from mer_jax.run import losses
from mer_jax.run import sequences
from mer_jax.run import sources
from mer_jax import models
from mer_jax.plumbing import runtime
from mer_jax.data import splits
from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method
from mer_jax.plumbing.errors import UsageError
from mer_jax.models import temporal
from mer_jax.models.layers import REMAT_POLICIES

PROTOCOLS = sources.PROTOCOLS
DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "cosine")
# config.selection: the run's epoch is always chosen on validation; test_fold_best_epoch
# also records each epoch's test predictions for the study's measure of that leak.
SELECTIONS = ("validation", "test_fold_best_epoch")


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
  sources.members(config.data)  # the datasets and the label scheme exist and agree
  sources.scheme(config.data)
  splits.check_split(config.data.protocol, config.data.get("split", "video"),
                     config.data.get("split_seed", splits.PAPER_SEED))  # before a build
  splits.check_train_fraction(config.data.get("train_fraction", 1.0))
  _valid("selection", config.get("selection", "validation"), SELECTIONS)
  _valid("model.dtype", config.model.dtype, DTYPES)
  _valid("optim.schedule", config.optim.schedule, SCHEDULES)
  sequences.check_config(config)
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
  """The config's Flax model for its label scheme's classes (sources.classes): the frame
  model, or with model.temporal its backbone's features under a temporal head."""
  m, head = config.model, config.model.get("temporal", temporal.NONE)
  k = len(sources.classes(config.data))
  backbone = models.create_model(
      m.name, num_classes=0 if head != temporal.NONE else k,
      img_size=m.img_size, in_chans=in_chans,
      drop_rate=m.drop_rate if head == temporal.NONE else 0.0,
      drop_path_rate=m.drop_path_rate, dtype=jnp.dtype(m.dtype),
      remat=m.get("remat", ""))  # runs from before remat existed have none
  if head == temporal.NONE:
    return backbone
  return temporal.VideoClassifier(backbone, head, k, hidden=m.temporal_hidden,
                                  drop_rate=m.drop_rate, freeze_backbone=m.freeze_backbone)


def dummy_inputs(config, in_chans: int) -> tuple:
  """The model's inputs for init: one image, or one video of two frames and its mask."""
  image = jnp.zeros((1, config.model.img_size, config.model.img_size, in_chans), jnp.float32)
  if not sequences.is_temporal(config):
    return (image,)
  return jnp.stack([image, image], axis=1), jnp.ones((1, 2), jnp.float32)


def init_params(config, in_chans: int, random_init, log=print):
  """ImageNet weights through the converter (cached), or `random_init(seed)`
  (programs.Programs.init: the model's init, jitted once per process); a temporal
  model's backbone converted and its head fresh."""
  video = sequences.is_temporal(config)
  if config.init.weights:
    from mer_jax.models import weights
    log(f"Initialising from {config.init.weights}")
    variables = weights.load_pretrained(
        config.model.name, config.init.weights, img_size=config.model.img_size,
        in_chans=in_chans, num_classes=0 if video else len(sources.classes(config.data)),
        seed=config.seed,
        cache_dir=config.init.cache_dir or None)
    if not video:
      return variables["params"]
  params = random_init(np.int32(config.seed))
  if config.init.weights:  # the backbone converted, the temporal head fresh
    params = dict(params, backbone=variables["params"])
  return params


def make_schedule(config, steps_per_epoch: int, lr=None):
  """The learning rate at each step. `lr` (default optim.lr) may be a traced
  scalar: the schedule's shape (kind, warmup and total steps) is fixed by the
  config, its peak is a value (`run_values`), so one compiled step serves runs
  of other learning rates."""
  o = config.optim
  lr = o.lr if lr is None else lr
  total, warmup = schedule_steps(config, steps_per_epoch)
  _valid("optim.schedule", o.schedule, SCHEDULES)
  if o.schedule == "cosine":   # optax's checks its peak in Python: the shape at 1, scaled
    shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(total, warmup + 1))
    return lambda count: lr * shape(count)
  if warmup:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  return optax.constant_schedule(lr)


def schedule_steps(config, steps_per_epoch: int) -> tuple[int, int]:
  """(total, warmup) steps of the schedule: what of it a compiled step bakes in
  (the total only under the cosine schedule, which decays over it)."""
  total = max(1, config.num_epochs * steps_per_epoch)
  warmup = int(config.optim.warmup_epochs * steps_per_epoch)
  return (total if config.optim.schedule == "cosine" else 0), warmup


def make_optimizer(config, steps_per_epoch: int, lr=None,
                   weight_decay=None) -> optax.GradientTransformation:
  """AdamW as the paper (PyTorch's AdamW: decoupled decay on every parameter);
  `lr` and `weight_decay` (default the config's) may be traced scalars."""
  o = config.optim
  wd = o.weight_decay if weight_decay is None else weight_decay
  tx = optax.adamw(make_schedule(config, steps_per_epoch, lr), b1=o.b1, b2=o.b2,
                   weight_decay=wd)
  if o.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  if config.model.get("freeze_backbone", False):  # no update, not even AdamW's decay
    tx = optax.multi_transform({"trained": tx, temporal.FROZEN: optax.set_to_zero()},
                               temporal.backbone_labels)
  return tx


def make_loss_fn(config):
  """(logits, labels, mask, class_weights) -> scalar: the config's loss with
  the inverse-frequency class weights of the training split (`run_values`;
  focal: as per-class alpha) as an argument."""
  loss, ls = losses.Loss.parse(config.loss.name), config.loss.label_smoothing

  def loss_fn(logits, labels, mask, class_weights):
    if loss is losses.Loss.FOCAL:
      return losses.focal_loss(logits, labels, alpha=class_weights, gamma=config.loss.gamma,
                               label_smoothing=ls, mask=mask)
    return losses.weighted_cross_entropy(
        logits, labels, weights=class_weights if loss is losses.Loss.WEIGHTED_CE else None,
        label_smoothing=ls, mask=mask)
  return loss_fn


def run_values(config, class_counts: np.ndarray) -> dict:
  """What differs between runs that share one compiled step, as arrays: the
  seed, the training split's class weights, the learning rate and weight
  decay."""
  return {"seed": np.asarray(config.seed, np.int32),
          "class_weights": losses.class_weights(np.asarray(class_counts)),
          "lr": np.asarray(config.optim.lr, np.float32),
          "weight_decay": np.asarray(config.optim.weight_decay, np.float32)}


def make_train_step(model, config, steps_per_epoch: int, *, is_flow: bool):
  """One step (state, batch, values) -> (state, metrics): augment on device ->
  forward -> loss -> AdamW. `values` are `run_values` (arguments, not
  constants of the trace). The step's RNG is a function of (seed, step), so a
  resumed run draws the same numbers. is_flow: the images are M3 flow
  (`Method.is_flow`), augmented as vectors."""
  loss_fn = make_loss_fn(config)
  aug_cfg, img_size = config.aug, config.model.img_size

  def step(state, batch, values):
    tx = make_optimizer(config, steps_per_epoch, values["lr"], values["weight_decay"])
    rng = jax.random.fold_in(jax.random.PRNGKey(values["seed"]), state["step"])
    aug_rng, drop_rng = jax.random.split(rng)
    video = "frame_mask" in batch  # a batch of videos (sequences.train_batches)
    images = (sequences.augment_videos if video else input_pipeline.augment)(
        aug_rng, batch["image"], aug_cfg, img_size, is_flow=is_flow)
    inputs = (images, batch["frame_mask"]) if video else (images,)

    def loss_of(params):
      logits = model.apply({"params": params}, *inputs, train=True,
                           rngs={"dropout": drop_rng})
      return loss_fn(logits.astype(jnp.float32), batch["label"], batch["mask"],
                     values["class_weights"])

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
    params = model.init(jax.random.PRNGKey(0), *dummy_inputs(config, in_chans))["params"]
    return fresh_state(params, tx)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      jax.eval_shape(shapes))
