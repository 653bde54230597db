"""Flax ports of the paper's token mixers: ViT-B/32, Swin-B, PoolFormer.

`create_model(name, ...)` is the one entry point; `mer_jax.models.convert`
turns timm checkpoints into the parameters these modules expect.
"""
from __future__ import annotations

import importlib

import jax.numpy as jnp

# name -> module in this package that defines it (one family per file, as timm).
_FAMILY = {
    "vit_b32": "vit",
    "swin_b": "swin",
    "poolformer_s12": "poolformer",
    "poolformer_s24": "poolformer",
    "poolformer_m36": "poolformer",
    "poolformer_m48": "poolformer",
}
MODEL_NAMES = tuple(_FAMILY)


def family(name: str) -> str:
  """The module (vit, swin, poolformer) that defines `name`."""
  try:
    return _FAMILY[name]
  except KeyError:
    raise ValueError(
        f"Unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}") from None


def create_model(name: str, num_classes: int = 7, img_size: int = 224,
                 in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, dtype=jnp.float32, remat: str = ""):
  """A flax.linen Module; `model.apply(variables, images_nhwc, train=...)`.

  `dtype` is the compute dtype (e.g. jnp.bfloat16); parameters stay float32.
  `remat` trades compute for memory in training: "block" recomputes each
  block's activations in the backward pass, "dots" keeps its weight-matmul
  outputs and recomputes the rest ('' = off; see `layers.remat_block`).
  """
  module = importlib.import_module(f"mer_jax.models.{family(name)}")
  return module.create(name, num_classes=num_classes, img_size=img_size,
                       in_chans=in_chans, drop_rate=drop_rate,
                       drop_path_rate=drop_path_rate, dtype=dtype, remat=remat)
