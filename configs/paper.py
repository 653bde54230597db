"""Any cell of the paper's grid: `--config configs/paper.py:model=swin_b,method=m2,phase=af`.

Keys (each optional; defaults pool_m36, m1, mfs, the paper's strongest pairing):
  model   vit_b32, swin_b, pool_m36, pool_m48 (the paper's names) or any registry
          name (poolformer_m36, poolformer_s12, ...)
  method  m1, m2 (the paper's), m2a (aligned faces), m3 (optical flow)
  phase   af (apex frame), kfs (key-frame sequence), mfs (multi-frame sequence)
The recipe itself is mer_jax/run/recipe.py (the study builds its cells from it too).
"""
from mer_jax.run import recipe


def get_config(arg: str = ""):
  return recipe.from_arg(arg)
