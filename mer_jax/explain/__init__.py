"""Why a model decides as it does: attribution maps and where they fall.

`attribute(fn, images, target, method=...)` works for any function from an
image batch to logits (integrated gradients, SmoothGrad, gradient);
`attention_rollout` (ViT) and `grad_cam` (Swin, PoolFormer) use the model's
insides; `where` turns maps into numbers (face mass, region mass, deletion
curve). `python -m mer_jax.explain --workdir RUN` does all of it for a
trained run (mer_jax.explain.survey).
"""
from mer_jax.explain.methods import METHODS, attention_rollout, attribute, grad_cam, rollout
from mer_jax.explain.where import (REGIONS, deletion_curve, face_mass, region_mass,
                                   region_masks)

__all__ = ["METHODS", "REGIONS", "attention_rollout", "attribute", "deletion_curve",
           "face_mass", "grad_cam", "region_mass", "region_masks", "rollout"]
