"""pool_m36 / M3 / MFS: optical flow (beyond the paper) over mer_jax/configs.py."""
from mer_jax import configs


def get_config():
  return configs.get_config("pool_m36", "m3", "mfs")
