"""swin_b / M2A / MFS: aligned faces (beyond the paper) over mer_jax/configs.py."""
from mer_jax import configs


def get_config():
  return configs.get_config("swin_b", "m2a", "mfs")
