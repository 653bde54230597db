"""One tiny architecture per family, registered in every test process.

The parity tests run them against timm's classes with the same hyper-parameters
(tests/parity.py), through the very `create` and `convert_timm` code the paper's
models use. The end-to-end tests (studies, training commands, launches) train
`poolformer_test`: what they check (resume, devices, hosts, reports) does not
need a 12-block network, whose compiles were most of their time. conftest
registers these in the test processes; `python tests/with_tiny.py MODULE ARGS`
in the processes tests start.
"""
from mer_jax import models
from mer_jax.plumbing.errors import UsageError
from mer_jax.models.poolformer import PoolFormerArch
from mer_jax.models.swin import SwinArch
from mer_jax.models.vit import ViTArch

TINY_SIZE = 32
TINY_VIT = ViTArch(patch_size=8, embed_dim=32, depth=2, num_heads=2)
# Two stages: at 32 px the first (8x8 map, window 7) has shifted windows on a
# map padded to 14, the second (4x4) a window clamped to the map, after a
# PatchMerging. Swin-B's deeper stages run the same code.
TINY_SWIN = SwinArch(embed_dim=16, depths=(2, 1), num_heads=(1, 2))
TINY_POOLFORMER = PoolFormerArch((1, 1, 1, 1), (16, 24, 32, 40), 1e-5)
TINY = {"vit": ("vit_test", TINY_VIT), "swin": ("swin_test", TINY_SWIN),
        "poolformer": ("poolformer_test", TINY_POOLFORMER)}
# The model the end-to-end tests train.
E2E_MODEL = "poolformer_test"


def register() -> None:
  """Registers TINY (once per process)."""
  for family, (name, arch) in TINY.items():
    try:
      models.family(name)
    except UsageError:
      models.register(name, family, arch)
