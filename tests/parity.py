"""Helpers shared by the timm parity tests (test_models and the family files).

The references are timm 1.0.31's own modules, randomly initialised and then
perturbed (`randomise`) so that parameters timm initialises to constants
(norms, biases, layer scales, bias tables) matter to the logits too.
The tiny architectures (tests/tiny.py, registered in every test process) run
through the very `create` and `convert_timm` code the paper's models use,
against timm's classes with the same hyper-parameters.
"""
from __future__ import annotations

import importlib

import numpy as np
import timm
import torch
from timm.models import metaformer as timm_metaformer
from timm.models import swin_transformer as timm_swin
from timm.models import vision_transformer as timm_vit

from mer_jax import models
from tiny import TINY, TINY_POOLFORMER, TINY_SIZE, TINY_SWIN, TINY_VIT

TOL = 1e-4  # relative L2 error of logits, float32 eval mode
FAMILIES = ("vit", "swin", "poolformer")


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def torch_sd(model) -> dict:
  """A torch module's state dict as {timm key: np.ndarray}."""
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def timm_logits(model, images_nhwc) -> np.ndarray:
  """timm's output on NHWC images; a gray image goes to a 3-channel model
  repeated to RGB, which is what the converted 1-channel stem computes."""
  if images_nhwc.shape[-1] == 1 and model_in_chans(model) == 3:
    images_nhwc = np.repeat(images_nhwc, 3, axis=-1)
  with torch.no_grad():
    return model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).numpy()


def timm_features(model, images_nhwc) -> np.ndarray:
  """timm's pooled features before the head (`forward_head(pre_logits=True)`)."""
  with torch.no_grad():
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    return model.forward_head(model.forward_features(x), pre_logits=True).numpy()


def model_in_chans(model) -> int:
  return next(p for p in model.parameters() if p.ndim == 4).shape[1]


def images(n, size, chans, seed=0):
  # ImageNet-normalised-like range, so activations are realistic.
  return np.random.RandomState(seed).uniform(-2, 2, (n, size, size, chans)).astype(np.float32)


def randomise(model, seed: int, std: float = 0.02):
  """Noise on the 1-d parameters (norms, biases, layer scales) and the
  relative position bias tables, which timm initialises to constants."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 or "relative_position_bias_table" in name:
        p.add_(torch.randn_like(p) * std)
  return model.eval()


# --- the paper's models --------------------------------------------------------

def timm_name(name: str, img_size: int) -> str:
  """The timm model whose pretrained configuration `name` mirrors at `img_size`."""
  if name == "vit_b32":
    return f"vit_base_patch32_{384 if img_size == 384 else 224}"
  if name == "swin_b":
    return ("swin_base_patch4_window12_384" if img_size == 384
            else "swin_base_patch4_window7_224")
  return name


def timm_model(name: str, img_size: int = 224, num_classes: int = 7, in_chans: int = 3,
               seed: int = 0):
  """A randomised timm reference for a registered model name. PoolFormer's
  layer scales start at 1e-5 / 1e-6, so they get larger noise."""
  torch.manual_seed(seed)
  m = timm.create_model(timm_name(name, img_size), pretrained=False,
                        num_classes=num_classes, in_chans=in_chans)
  return randomise(m, seed + 1, 0.3 if models.family(name) == "poolformer" else 0.02)


# --- one tiny architecture per family (tests/tiny.py) -------------------------

def family_module(family: str):
  return importlib.import_module(f"mer_jax.models.{family}")


def tiny_timm(family: str, img_size: int = TINY_SIZE, num_classes: int = 7, in_chans: int = 3,
              seed: int = 0, **kw):
  """timm's own class with the tiny architecture's hyper-parameters, randomised."""
  torch.manual_seed(seed)
  common = dict(num_classes=num_classes, in_chans=in_chans)
  if family == "vit":
    a = TINY_VIT
    m = timm_vit.VisionTransformer(img_size=img_size, patch_size=a.patch_size,
                                   embed_dim=a.embed_dim, depth=a.depth, num_heads=a.num_heads,
                                   **common, **kw)
  elif family == "swin":
    a = TINY_SWIN
    m = timm_swin.SwinTransformer(img_size=img_size, embed_dim=a.embed_dim, depths=a.depths,
                                  num_heads=a.num_heads, **common, **kw)
  else:
    a = TINY_POOLFORMER
    # timm's poolformer_* arguments (timm.models.metaformer.poolformer_s12).
    m = timm_metaformer.MetaFormer(
        depths=a.depths, dims=a.dims, downsample_norm=None, mlp_act=torch.nn.GELU,
        mlp_bias=True, norm_layers=timm_metaformer.GroupNorm1,
        layer_scale_init_values=a.layer_scale_init, res_scale_init_values=None,
        use_mlp_head=False, **common, **kw)
  return randomise(m, seed + 1, 0.3 if family == "poolformer" else 0.02)
