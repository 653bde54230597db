"""CASME II for TFDS: `tfds build datasets/casme2 --config m2_mfs --manual_dir DIR`.

Configs m1_af m1_kfs m1_mfs m2_af m2_kfs m2_mfs; splits train/validation/test
(the paper's 201/26/28 video split). The implementation, features and build
options are documented in `mer_jax.data.tfds_casme2`; from Python,
`mer_jax.data.build.ensure_built(...)` does the same without this file.
"""
from mer_jax.data import tfds_casme2


class Builder(tfds_casme2.Casme2Builder):
  """CASME II micro-expression frames, preprocessed by M1/M2, per AF/KFS/MFS phase."""
