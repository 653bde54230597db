"""Flax ports of the paper's token mixers: ViT-B/32, Swin-B, PoolFormer.

The one model registry: each name maps to its family module (one family per
file, as timm), and every family module offers the same functions:
`create(name, ...)` builds the Flax module, `convert_timm(name, state_dict,
...)` turns a timm checkpoint into its parameters (the family's timm key
rules sit beside the model, as timm's `checkpoint_filter_fn` does).
`create_model` and `from_timm` dispatch through it; `mer_jax.models.weights`
reads weight files and caches conversions.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import jax.numpy as jnp

from mer_jax.plumbing.errors import UsageError

# name -> module in this package that defines it.
_FAMILY = {
    "vit_b32": "vit",
    "swin_b": "swin",
    "poolformer_s12": "poolformer",
    "poolformer_s24": "poolformer",
    "poolformer_m36": "poolformer",
    "poolformer_m48": "poolformer",
}
MODEL_NAMES = tuple(_FAMILY)   # the built-in architectures (the paper's and PoolFormer-S)


def family(name: str) -> str:
  """The module (vit, swin, poolformer) that defines `name`."""
  try:
    return _FAMILY[name]
  except KeyError:
    raise UsageError(
        f"Unknown model {name!r}; valid names: {', '.join(_FAMILY)}") from None


def register(name: str, family_name: str, arch) -> None:
  """Adds an architecture of a family under `name` (as timm's `register_model`):
  `arch` is the family's own record (`vit.ViTArch`, `swin.SwinArch`,
  `poolformer.PoolFormerArch`). The name then works wherever a built-in one does
  in this process (recipe, train, study, export); it has no timm weights. A name
  already taken is refused."""
  if name in _FAMILY:
    raise UsageError(f"Model {name!r} is already registered; choose another name.")
  module = importlib.import_module(f"{__name__}.{family_name}")
  module.ARCHS[name] = arch
  _FAMILY[name] = family_name


def family_module(name: str) -> ModuleType:
  """The family module of `name` (imported on first use: a run that trains
  PoolFormer never builds ViT or Swin code)."""
  return importlib.import_module(f"{__name__}.{family(name)}")


def create_model(name: str, num_classes: int = 7, img_size: int = 224,
                 in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, dtype=jnp.float32, remat: str = ""):
  """A flax.linen Module; `model.apply(variables, images_nhwc, train=...)`.

  `dtype` is the compute dtype (e.g. jnp.bfloat16); parameters stay float32.
  `remat` trades compute for memory in training: "block" recomputes each
  block's activations in the backward pass, "dots" keeps its weight-matmul
  outputs and recomputes the rest ('' = off; see `layers.remat_block`).
  """
  return family_module(name).create(
      name, num_classes=num_classes, img_size=img_size, in_chans=in_chans,
      drop_rate=drop_rate, drop_path_rate=drop_path_rate, dtype=dtype, remat=remat)


def from_timm(name: str, state_dict, img_size: int = 224, in_chans: int = 3,
              num_classes: int = 7, seed: int = 0) -> dict:
  """Flax variables ({'params': ...}) for `create_model(name, ...)` from timm weights.

  state_dict: {timm key: array}. Every tensor is used or the call fails
  (`ConversionError` naming the keys), except a classifier head of another
  size, which is re-initialised from `seed`.
  """
  params = family_module(name).convert_timm(
      name, state_dict, img_size=img_size, in_chans=in_chans,
      num_classes=num_classes, seed=seed)
  return {"params": params}
