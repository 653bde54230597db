"""Attribution maps: which pixels of an image drive a class's logit.

Model-agnostic (`attribute`): any `fn` from a float image batch (N, H, W, C)
to logits (N, K). Model-specific: attention rollout for ViT
(`attention_rollout`) and Grad-CAM on the last stage for Swin and PoolFormer
(`grad_cam`). Every function returns one map per image, (N, H, W) float32,
at the images' own resolution.

Why not PAIR's `saliency` package: its core (`saliency.core`) takes a
callback that returns gradients and runs one image at a time, looping over
the integration steps or noise samples in Python (numpy in between). Here
the whole loop (steps or samples x a batch of images) is one jitted XLA
program, which on a 2-core CPU is what counts; the methods are the same
(Sundararajan et al. 2017; Smilkov et al. 2017), with the same conventions
where they have one (SmoothGrad's noise sd as a share of the input's range).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("integrated_gradients", "smoothgrad", "gradient")


def _targets(target, n: int) -> np.ndarray:
  t = np.broadcast_to(np.asarray(target, np.int32), (n,))
  if t.ndim != 1:
    raise ValueError(f"target must be an int or one int per image, got shape {np.shape(target)}")
  return np.ascontiguousarray(t)


def _target_grad(fn: Callable):
  """(x, target) -> d logit[target] / dx for each image (images are independent)."""
  def total(x, target):
    logits = fn(x)
    return jnp.take_along_axis(logits, target[:, None], axis=1).sum()
  return jax.grad(total)


def _integrated_gradients(steps: int):
  def run(fn, x, baseline, target, index):
    del index
    grad = _target_grad(fn)
    # Midpoint rule: its error falls as 1/steps^2 (the left rule's as 1/steps).
    alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps

    def body(acc, a):
      return acc + grad(baseline + a * (x - baseline), target), None
    total, _ = jax.lax.scan(body, jnp.zeros_like(x), alphas)
    return ((x - baseline) * total / steps).sum(-1)
  return run


def _smoothgrad(samples: int, noise: float, seed: int):
  def run(fn, x, baseline, target, index):
    del baseline
    grad = _target_grad(fn)
    key = jax.random.PRNGKey(seed)
    span = x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3), keepdims=True)
    sd = noise * span
    # Each image's noise comes from (seed, its index): the same whatever the batch size.
    keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i), samples))(index)

    def body(acc, k):
      eps = jax.vmap(lambda kk: jax.random.normal(kk, x.shape[1:], x.dtype))(k)
      return acc + grad(x + sd * eps, target), None
    total, _ = jax.lax.scan(body, jnp.zeros_like(x), jnp.swapaxes(keys, 0, 1))
    return jnp.abs(total / samples).sum(-1)
  return run


def _gradient():
  def run(fn, x, baseline, target, index):
    del baseline, index
    return jnp.abs(_target_grad(fn)(x, target)).sum(-1)
  return run


def attribute(fn: Callable, images, target, method: str = "integrated_gradients", *,
              baseline=None, steps: int = 32, samples: int = 16, noise: float = 0.15,
              seed: int = 0, batch_size: int = 16) -> np.ndarray:
  """One attribution map per image, (N, H, W) float32, for the logit of `target`.

  fn: float images (N, H, W, C) -> logits (N, K), traceable by JAX; images:
  (N, H, W, C) in fn's input units; target: a class index, or one per image.
  A `jax.tree_util.Partial(apply, params)` enters the compiled program with
  its bound arguments as the program's arguments (a model's weights are not
  compiled in as constants, and the program serves any weights of that shape).

  - "integrated_gradients": (x - baseline) times the mean gradient along the
    straight path baseline -> x (`steps` points, midpoint rule), summed over
    channels. Signed: positive pixels raise the target logit above the
    baseline's; completeness: a map sums to fn(x) - fn(baseline) for the
    target, up to the quadrature error. baseline: None = black (zeros), or an
    array broadcastable to the images.
  - "smoothgrad": the gradient averaged over `samples` noisy copies (Gaussian,
    sd = `noise` x the image's max - min, seeded by `seed`), absolute value
    summed over channels: a sensitivity, never negative.
  - "gradient": |d logit / d pixel| summed over channels, never negative.

  Images go through in jitted batches of `batch_size` (the last one padded,
  so one compilation serves every batch); the maps do not depend on it.
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
  n = len(images)
  targets = _targets(target, n)
  base = np.broadcast_to(np.zeros((), np.float32) if baseline is None
                         else np.asarray(baseline, np.float32), images.shape)
  run = jax.jit({"integrated_gradients": lambda: _integrated_gradients(steps),
                 "smoothgrad": lambda: _smoothgrad(samples, noise, seed),
                 "gradient": _gradient}[method]())
  # A plain function becomes a Partial with no bound arguments: a pytree without leaves.
  fn = fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)
  return _batched(lambda *a: run(fn, *a), images, batch_size, base, targets,
                  np.arange(n, dtype=np.int32))


def upsample(maps, size: tuple[int, int]) -> jnp.ndarray:
  """(N, h, w) -> (N, H, W), bilinear (pixel centres aligned, as jax.image.resize)."""
  maps = jnp.asarray(maps, jnp.float32)
  return jax.image.resize(maps, (maps.shape[0], *size), "bilinear")


def rollout(attentions, residual: float = 0.5) -> jnp.ndarray:
  """Attention rollout (Abnar & Zuidema 2020) of per-layer attentions, first layer first.

  Each layer's (N, heads, T, T) weights are averaged over heads, mixed with
  the identity for the residual path (residual * I + (1 - residual) * A, rows
  renormalised) and multiplied through the layers: (N, T, T), the share of
  each input token in each output token.
  """
  out = None
  for a in attentions:
    a = jnp.asarray(a, jnp.float32).mean(axis=1)
    a = residual * jnp.eye(a.shape[-1], dtype=a.dtype) + (1 - residual) * a
    a = a / a.sum(-1, keepdims=True)
    out = a if out is None else a @ out
  return out


def attention_rollout(model, params, images, *, prepare: Callable = lambda x: x,
                      residual: float = 0.5, batch_size: int = 16) -> np.ndarray:
  """ViT's attention rollout from the class token to the patches, (N, H, W) float32.

  model: a mer_jax ViT (its attention blocks sow their weights into the
  "intermediates" collection); prepare: images -> the model's input (resize,
  normalise). Class-agnostic, as rollout is: it follows attention, not a
  logit. The patch grid is upsampled bilinearly to the images' size.
  """
  images = np.asarray(images)
  size = images.shape[1:3]

  @jax.jit
  def run(params, x):  # the weights an argument, not constants compiled in
    _, state = model.apply({"params": params}, prepare(x), train=False,
                           mutable=["intermediates"])
    inter = state["intermediates"]
    blocks = sorted((k for k in inter if k.startswith("blocks_")),
                    key=lambda k: int(k.split("_")[1]))
    r = rollout([inter[k]["attn"]["attention"][0] for k in blocks], residual)
    cls = r[:, 0, 1:]
    g = int(round(np.sqrt(cls.shape[-1])))
    return upsample(cls.reshape(-1, g, g), size)
  return _batched(lambda x: run(params, x), images, batch_size)


def _batched(run, images: np.ndarray, batch_size: int, *extra) -> np.ndarray:
  """run(images, *extra) over batches of `batch_size` images (float32), the last one
  padded by repeating its last image: one compilation for every batch."""
  n = len(images)
  b = min(batch_size, n)
  out = []
  for start in range(0, n, b):
    stop = min(start + b, n)
    pad = b - (stop - start)
    chunk = [np.concatenate([a[start:stop], np.repeat(a[stop - 1:stop], pad, 0)])
             for a in (images, *extra)]
    chunk[0] = chunk[0].astype(np.float32)
    out.append(np.asarray(run(*chunk))[:stop - start])
  return np.concatenate(out).astype(np.float32)


def feature_map_and_grad(model, params, x, target, layer: str):
  """(A, dlogit[target]/dA) of submodule `layer`'s output A (N, h, w, C).

  The layer's output gets a zero added through flax's method interception;
  the gradient with respect to that zero is the gradient with respect to A,
  with no change to the model or its parameters.
  """
  def with_delta(delta):
    seen = []

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.name == layer and context.method_name == "__call__":
        seen.append(out)
        if delta is not None:
          out = out + delta
      return out
    import flax.linen as nn
    with nn.intercept_methods(interceptor):
      logits = model.apply({"params": params}, x, train=False)
    if not seen:
      raise ValueError(f"the model has no submodule {layer!r}")
    return logits, seen[-1]

  shape = jax.eval_shape(lambda: with_delta(None)[1])

  def target_logit(delta):
    logits, a = with_delta(delta)
    return jnp.take_along_axis(logits, target[:, None], axis=1).sum(), a
  grads, a = jax.grad(target_logit, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
  return a, grads


def grad_cam(model, params, images, target, *, prepare: Callable = lambda x: x,
             layer: str | None = None, batch_size: int = 16) -> np.ndarray:
  """Grad-CAM (Selvaraju et al. 2017) on the last stage, (N, H, W) float32.

  ReLU(sum_c w_c A_c), w_c the spatial mean of d logit[target] / d A_c, A the
  output of `layer` (default: the model's `last_stage`, Swin's and
  PoolFormer's last stage, NHWC), upsampled bilinearly to the images' size.
  Non-negative by construction.
  """
  images = np.asarray(images)
  size = images.shape[1:3]
  layer = layer or model.last_stage

  @jax.jit
  def run(params, x, t):  # the weights an argument, not constants compiled in
    a, g = feature_map_and_grad(model, params, prepare(x), t, layer)
    w = g.astype(jnp.float32).mean(axis=(1, 2), keepdims=True)
    cam = jax.nn.relu((w * a.astype(jnp.float32)).sum(-1))
    return upsample(cam, size)
  return _batched(lambda x, t: run(params, x, t), images, batch_size,
                  _targets(target, len(images)))
