"""timm checkpoints -> Flax parameters: the public entry points in one place.

The work lives elsewhere: each family's timm key rules beside its model
(`vit.convert_timm` with `vit.npz_to_timm` for Google's .npz, `swin.convert_timm`,
`poolformer.convert_timm` with `poolformer.original_to_timm`), dispatched by
the registry's `mer_jax.models.from_timm`; the shared key accounting in
`state_dict`; position-table resampling in `resample`; files, hub and cache
in `weights`. This module keeps the names callers have always imported from
`mer_jax.models.convert`.
"""
from __future__ import annotations

from mer_jax.models import from_timm
from mer_jax.models.poolformer import original_to_timm as poolformer_original_to_timm
from mer_jax.models.resample import resample_abs_pos_embed, torch_interpolate
from mer_jax.models.state_dict import (ConversionError, StateDict, adapt_input_conv,
                                       classifier_head, conv_kernel, dense_kernel,
                                       finish_with_head, take_shaped)
from mer_jax.models.vit import npz_to_timm as vit_npz_to_timm
from mer_jax.models.weights import (WeightsNotFound, default_cache_dir, load_pretrained,
                                    load_state_dict, resolve_weights)

__all__ = [
    "ConversionError", "StateDict", "WeightsNotFound", "adapt_input_conv", "classifier_head",
    "conv_kernel", "default_cache_dir", "dense_kernel", "finish_with_head", "from_timm",
    "load_pretrained", "load_state_dict", "poolformer_original_to_timm",
    "resample_abs_pos_embed", "resolve_weights", "take_shaped", "torch_interpolate",
    "vit_npz_to_timm",
]
