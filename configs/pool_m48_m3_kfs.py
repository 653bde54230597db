"""pool_m48 / M3 / KFS: optical flow (beyond the paper) over mer_jax/configs.py."""
from mer_jax import configs


def get_config():
  return configs.get_config("pool_m48", "m3", "kfs")
