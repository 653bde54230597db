"""timm checkpoints -> Flax parameters. The only module that knows timm's names.

Layout: shared helpers (key accounting, kernel layouts, timm's
`adapt_input_conv`), then one section per family (`_vit_from_timm`,
`_swin_from_timm`, `_poolformer_from_timm`), then `from_timm` dispatching on
the family and the weight-file loaders. Training never imports torch.
"""
from __future__ import annotations

import numpy as np

from mer_jax import models


class ConversionError(ValueError):
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


# --- families -------------------------------------------------------------
# Each returns a Flax params tree for `models.create_model(name, ...)` and
# calls `sd.finish()`. Heads of another size than `num_classes` are re-initialised.


def _vit_from_timm(name, sd: StateDict, *, img_size, in_chans, num_classes, seed):
  raise NotImplementedError("ViT conversion")


def _swin_from_timm(name, sd: StateDict, *, img_size, in_chans, num_classes, seed):
  raise NotImplementedError("Swin conversion")


def _poolformer_from_timm(name, sd: StateDict, *, img_size, in_chans, num_classes, seed):
  raise NotImplementedError("PoolFormer conversion")


_CONVERTERS = {"vit": _vit_from_timm, "swin": _swin_from_timm,
               "poolformer": _poolformer_from_timm}


def from_timm(name: str, state_dict, img_size: int = 224, in_chans: int = 3,
              num_classes: int = 7, seed: int = 0) -> dict:
  """Flax variables ({'params': ...}) for `create_model(name, ...)` from timm weights.

  state_dict: {timm key: array}. Every tensor is used or the call fails,
  except a classifier head of another size, which is re-initialised.
  """
  sd = StateDict(state_dict)
  params = _CONVERTERS[models.family(name)](
      name, sd, img_size=img_size, in_chans=in_chans,
      num_classes=num_classes, seed=seed)
  return {"params": params}
