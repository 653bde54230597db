"""Reading a timm state dict into Flax parameters: what every family's converter shares.

Each family file (vit, swin, poolformer) holds its own timm key rules, as
timm's `checkpoint_filter_fn` sits beside each model; they all read the
checkpoint through `StateDict`, so a tensor left unused, missing or of the
wrong shape is an error that names it, never a silent partial load. Plain
numpy: converting needs neither torch nor jax devices.
"""
from __future__ import annotations

import logging

import jax
import numpy as np

from mer_jax.plumbing.errors import UserError
from mer_jax.models import layers


class ConversionError(UserError, ValueError):
  """A checkpoint that does not fit the model; the message names the keys."""


class StateDict:
  """A timm state dict that remembers which keys were used.

  `finish()` raises if any key was left unused, so a partial load is never silent.
  """

  def __init__(self, state_dict):
    self._sd = {k: np.asarray(v) for k, v in state_dict.items()}
    self._used = set()

  def __contains__(self, key):
    return key in self._sd

  def keys(self):
    return self._sd.keys()

  def take(self, key: str) -> np.ndarray:
    if key not in self._sd:
      raise ConversionError(f"checkpoint has no key {key!r}")
    self._used.add(key)
    return self._sd[key]

  def skip(self, key: str):
    """Marks a key as deliberately unused (e.g. a buffer the port recomputes)."""
    self._used.add(key)

  def finish(self):
    left = sorted(set(self._sd) - self._used)
    if left:
      raise ConversionError(
          f"{len(left)} checkpoint tensors were not used: {', '.join(left[:20])}"
          + (" ..." if len(left) > 20 else ""))


def conv_kernel(w_oihw: np.ndarray) -> np.ndarray:
  """torch Conv2d weight [O, I, H, W] -> flax [H, W, I, O]."""
  return np.transpose(w_oihw, (2, 3, 1, 0))


def dense_kernel(w_out_in: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> flax [in, out]."""
  return np.transpose(w_out_in)


def adapt_input_conv(in_chans: int, w_oihw: np.ndarray) -> np.ndarray:
  """timm's rule for a stem conv with a different number of input channels.

  1 channel: sum over the RGB channels (a gray image then gives the same
  output as the RGB model on that image repeated to three channels).
  """
  w = np.asarray(w_oihw, np.float32)
  i = w.shape[1]
  if in_chans == i:
    return w
  if in_chans == 1:
    if i > 3:
      assert i % 3 == 0
      w = w.reshape(w.shape[0], i // 3, 3, *w.shape[2:]).sum(axis=2)
    else:
      w = w.sum(axis=1, keepdims=True)
    return w
  if i != 3:
    raise ConversionError("weight format not supported for input-channel adaptation")
  repeat = int(np.ceil(in_chans / 3))
  w = np.tile(w, (1, repeat, 1, 1))[:, :in_chans]
  return w * (3 / float(in_chans))


def take_shaped(sd: StateDict, key: str, shape: tuple) -> np.ndarray:
  """sd.take(key) as float32, checked against the shape the model needs."""
  w = np.asarray(sd.take(key), np.float32)
  if w.shape != tuple(shape):
    raise ConversionError(
        f"checkpoint tensor {key!r} has shape {w.shape}, the model needs {tuple(shape)}: "
        "is this a checkpoint of the same architecture?")
  return w


def dense(sd: StateDict, prefix: str, d_in: int, d_out: int, bias: bool = True) -> dict:
  """torch Linear `{prefix}.weight/bias` -> flax Dense params."""
  p = {"kernel": dense_kernel(take_shaped(sd, f"{prefix}.weight", (d_out, d_in)))}
  if bias:
    p["bias"] = take_shaped(sd, f"{prefix}.bias", (d_out,))
  return p


def norm(sd: StateDict, prefix: str, dim: int) -> dict:
  """torch LayerNorm / GroupNorm `{prefix}.weight/bias` -> flax scale/bias."""
  return {"scale": take_shaped(sd, f"{prefix}.weight", (dim,)),
          "bias": take_shaped(sd, f"{prefix}.bias", (dim,))}


def stem_conv(sd: StateDict, prefix: str, out: int, k: int, in_chans: int, what: str) -> dict:
  """A k x k input conv `{prefix}.weight/bias`, adapted to `in_chans` (timm's
  `adapt_input_conv`); `what` names the model in the error."""
  w = np.asarray(sd.take(f"{prefix}.weight"), np.float32)
  if w.ndim != 4 or w.shape[0] != out or w.shape[2:] != (k, k):
    raise ConversionError(
        f"checkpoint tensor '{prefix}.weight' has shape {w.shape}, expected "
        f"[{out}, C, {k}, {k}]: not {what}.")
  return {"kernel": conv_kernel(adapt_input_conv(in_chans, w)),
          "bias": take_shaped(sd, f"{prefix}.bias", (out,))}


def classifier_head(sd: StateDict, prefix: str, dim: int, num_classes: int, seed: int) -> dict:
  """The checkpoint's `{prefix}.weight/bias` if it has `num_classes` outputs,
  else a fresh head initialised as timm does (trunc_normal std .02, zero bias):
  an ImageNet head (1000 classes) is replaced for the 7 emotions."""
  wkey, bkey = f"{prefix}.weight", f"{prefix}.bias"
  if wkey in sd:
    w = np.asarray(sd.take(wkey), np.float32)
    if w.shape == (num_classes, dim):
      return {"kernel": dense_kernel(w), "bias": take_shaped(sd, bkey, (num_classes,))}
    if w.ndim != 2 or w.shape[1] != dim:
      raise ConversionError(
          f"checkpoint tensor {wkey!r} has shape {w.shape}: a head on {w.shape[-1]} "
          f"features, the model's has {dim}")
    if bkey in sd:
      sd.skip(bkey)
    logging.info("Re-initialising the classifier head: checkpoint has %d classes, model %d.",
                 w.shape[0], num_classes)
  kernel = layers.trunc_normal(jax.random.PRNGKey(seed), (dim, num_classes), np.float32)
  return {"kernel": np.asarray(kernel), "bias": np.zeros((num_classes,), np.float32)}


def finish_with_head(sd: StateDict, params: dict, prefix: str, dim: int, num_classes: int,
                     seed: int) -> dict:
  """Adds the classifier head (see `classifier_head`; with num_classes=0 the
  model has none and the checkpoint's is dropped), then checks that every
  checkpoint tensor was used (`sd.finish()`)."""
  if num_classes > 0:
    params["head"] = classifier_head(sd, prefix, dim, num_classes, seed)
  else:
    for key in (f"{prefix}.weight", f"{prefix}.bias"):
      if key in sd:
        sd.skip(key)
  sd.finish()
  return params
