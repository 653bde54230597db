"""PoolFormer-m36 on the multi-frame sequence (MFS): the paper's strongest pairing.

M1 by default; `--config configs/pool_m36_mfs.py:m2` selects the face-cropped M2
(the same configs as configs/paper.py:model=pool_m36,method=METHOD,phase=mfs).
"""
from mer_jax.run import recipe


def get_config(method: str = "m1"):
  return recipe.get_config("pool_m36", method, "mfs")
