"""Helpers shared by the timm parity tests (test_vit, test_swin, test_poolformer)."""
import numpy as np
import torch

TOL = 1e-4  # relative L2 error of logits, float32 eval mode


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def torch_sd(model) -> dict:
  """A torch module's state dict as {timm key: np.ndarray}."""
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def timm_logits(model, images_nhwc) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)).numpy()


def images(n, size, chans, seed=0):
  # ImageNet-normalised-like range, so activations are realistic.
  return np.random.RandomState(seed).uniform(-2, 2, (n, size, size, chans)).astype(np.float32)
