"""Quickstart: a small PoolFormer on the embedded synthetic CASME II, on a CPU.

Writes the synthetic set (data/synthetic_casme2_quickstart) and its TFDS
dataset (data/tfds_quickstart) on first use, trains poolformer_s12 from random
init (no ImageNet weights needed) on the apex frames and reports on the test
split. README's Quickstart gives its time on a 2-core CPU and its output.

From scratch, on 201 training images and a few hundred steps, a network only
learns motion it can see: the quickstart's synthetic clips move 3x more than
the default synthetic set (data.synthetic_intensity=3, ~27 px at the apex of
a 640x480 frame instead of ~9). The paper's configs fine-tune ImageNet
weights on the real, subtle motion. The network sees the face at 64 px: from
scratch on 201 images, the small input learns faster per epoch than 112 px
did (validation macro-F1 0.62 after 7 epochs, 0.31 at 112 px) at a third of
the cost per step, so 12 epochs do what 25 did (BENCHMARKS.md).

`--config configs/quickstart.py:m1` trains M1 instead (the whole frame's
centre square, RGB): there the face is a fifth of the image and moves with
the subject, so the network sees it at 96 px, on clips that move twice as
much (their own synthetic set), for longer: a run to explain where M1 looks
(BENCHMARKS.md "Explaining a run").
"""
from mer_jax.plumbing.errors import UsageError
from mer_jax.run import recipe


def get_config(method: str = "m2"):
  if method not in ("m2", "m1"):
    raise UsageError(f"configs/quickstart.py takes m2 (the default) or m1, got {method!r}")
  c = recipe.get_config("poolformer_s12", method, "af")
  c.init.weights = ""                   # random init: nothing to download
  c.model.img_size = 64                 # M2's 224 crops, resized on device (see above)
  c.model.drop_path_rate = 0.0
  c.data.manual_dir = "data/synthetic_casme2_quickstart"
  c.data.data_dir = "data/tfds_quickstart"
  c.data.synthetic = True
  c.data.synthetic_intensity = 3.0
  c.aug.enabled = False                 # a short run: every step on the plain frames
  c.loss.name = "weighted_ce"
  c.optim.lr = 1e-3                     # from scratch, unlike the paper's fine-tuning
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 2
  c.batch_size = 16
  c.eval_batch_size = 64
  c.num_epochs = 12
  c.patience = 8
  if method == "m1":
    c.data.manual_dir = "data/synthetic_casme2_quickstart_m1"
    c.data.synthetic_intensity = 6.0    # at 3, 9 epochs at 128 px learned nothing (BENCHMARKS)
    c.model.img_size = 96               # the face ~40 px of it
    c.optim.lr = 3e-4                   # at 1e-3 it fell into predicting one class
    c.optim.grad_clip = 1.0
    c.num_epochs = 30
    c.patience = 12
  return c
