"""pool_m36 / M2 / KFS: the paper's cell, over mer_jax/configs.py."""
from mer_jax import configs


def get_config():
  return configs.get_config("pool_m36", "m2", "kfs")
