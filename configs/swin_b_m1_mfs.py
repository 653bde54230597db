"""swin_b / M1 / MFS: the paper's cell, over mer_jax/configs.py."""
from mer_jax import configs


def get_config():
  return configs.get_config("swin_b", "m1", "mfs")
