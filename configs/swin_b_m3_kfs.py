"""swin_b / M3 / KFS: optical flow (beyond the paper) over mer_jax/configs.py."""
from mer_jax import configs


def get_config():
  return configs.get_config("swin_b", "m3", "kfs")
