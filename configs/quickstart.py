"""Quickstart: a small PoolFormer on the embedded synthetic CASME II, on a CPU.

Writes the synthetic set (data/synthetic_casme2) and its TFDS dataset
(data/tfds) on first use, trains from random init (no ImageNet weights needed)
and reports on the test split. A few minutes on a 2-core CPU.
"""
from mer_jax import configs


def get_config():
  c = configs.get_config("poolformer_s12", "m2", "mfs")
  c.init.weights = ""                   # random init: nothing to download
  c.model.img_size = 112                # M2's 224 crops, resized on device for speed
  c.model.drop_path_rate = 0.0
  c.data.manual_dir = "data/synthetic_casme2"
  c.data.data_dir = "data/tfds"
  c.data.synthetic = True
  c.loss.name = "weighted_ce"
  c.optim.lr = 1e-3                     # from scratch, unlike the paper's fine-tuning
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 1
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 12
  c.patience = 4
  return c
