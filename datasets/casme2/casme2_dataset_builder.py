"""CASME II for TFDS's own tools: `tfds build datasets/casme2 --config m2_mfs --manual_dir DIR`.

The TFDS-native alternative to `python -m mer_jax.data.build` (the documented
way), which builds the same datasets without this file. Configs m1_af ...
m2_mfs; splits train/validation/test (the paper's 201/26/28 video split). The
implementation, features and build options are in `mer_jax.data.tfds_builder`.
"""
from mer_jax.data import tfds_builder


class Builder(tfds_builder.MerBuilder):
  """CASME II micro-expression frames, preprocessed by M1/M2/M2A/M3, per AF/KFS/MFS phase."""
