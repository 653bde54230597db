"""A temporal head: one video's ordered frames -> one prediction, beyond frame voting.

The paper classifies each frame and lets the frames of a video vote; its future
work names a recurrent head over the frame sequence instead. `VideoClassifier`
runs any registry backbone built with `num_classes=0` (its pooled, pre-logits
features: the same parameters and names as the frame model, without `head`) on
every frame, then a GRU over the frame embeddings (its last valid state) or
their mean, then one Linear head. The backbone's parameters sit under
`backbone`, so ImageNet weights convert as for the frame model.

Padded frames (videos of different lengths in one batch) are masked: padding
is at the end of each sequence (`frame_mask` [B, T], 1 = real frame) and
changes nothing of the output. With `freeze_backbone` the features are a
constant to the head (stop_gradient, backbone in inference mode); the
optimizer leaves the backbone's parameters alone (`backbone_labels`).

A model spec names a study's model in one string (`spec_name`, `parse_spec`):
BACKBONE for frame voting, BACKBONE+HEAD for a temporal head trained end to
end, BACKBONE+HEAD+frozen on frozen features; e.g. `poolformer_s12+gru`.
"""
from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mer_jax.models.layers import trunc_normal
from mer_jax.plumbing.errors import UsageError

NONE = "none"
HEADS = (NONE, "gru", "mean")   # model.temporal: "none" is the frame model with voting
FROZEN = "frozen"


def parse_spec(spec: str) -> tuple[str, str, bool]:
  """(backbone name, temporal head, frozen) of a model spec: "poolformer_s12" ->
  (poolformer_s12, none, False), "poolformer_s12+gru+frozen" -> (.., gru, True).
  The backbone name is checked by the registry's callers, the rest here."""
  name, *rest = (p.strip() for p in spec.split("+"))
  frozen = FROZEN in rest
  heads = [p for p in rest if p != FROZEN]
  if len(heads) > 1 or (heads and heads[0] not in HEADS[1:]) or (frozen and not heads) \
      or rest.count(FROZEN) > 1:
    raise UsageError(f"Model {spec!r}: write BACKBONE, BACKBONE+HEAD or BACKBONE+HEAD+frozen "
                     f"with HEAD one of {', '.join(HEADS[1:])} (e.g. poolformer_s12+gru)")
  return name, heads[0] if heads else NONE, frozen


def spec_name(name: str, temporal: str = NONE, frozen: bool = False) -> str:
  """The model spec of a backbone, a head and the freezing (inverse of `parse_spec`)."""
  if temporal == NONE:
    return name
  return f"{name}+{temporal}" + (f"+{FROZEN}" if frozen else "")


def spec_of(model_cfg: Mapping) -> str:
  """The model spec of a config's `model` block (a run's saved config.json too;
  runs from before the temporal head have no such fields: frame voting)."""
  return spec_name(model_cfg["name"], model_cfg.get("temporal", NONE),
                   bool(model_cfg.get("freeze_backbone", False)))


def mean_pool(features, frame_mask):
  """The mean of features [B, T, D] over the real frames (frame_mask [B, T])."""
  m = frame_mask.astype(features.dtype)[..., None]
  return jnp.sum(features * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


class VideoClassifier(nn.Module):
  """frames [B, T, H, W, C] (normalised floats), frame_mask [B, T] -> logits [B, classes]."""
  backbone: nn.Module            # a registry model with num_classes=0
  head: str = "gru"              # "gru" | "mean"
  num_classes: int = 7
  hidden: int = 256              # the GRU's state size
  drop_rate: float = 0.0         # dropout before the Linear head
  freeze_backbone: bool = False

  @nn.compact
  def __call__(self, frames, frame_mask, train: bool = False):
    b, t = frames.shape[:2]
    features = self.backbone(frames.reshape((b * t,) + frames.shape[2:]),
                             train=train and not self.freeze_backbone)
    features = features.reshape(b, t, -1).astype(jnp.float32)
    if self.freeze_backbone:
      features = jax.lax.stop_gradient(features)
    if self.head == "mean":
      pooled = mean_pool(features, frame_mask)
    elif self.head == "gru":
      lengths = jnp.sum(frame_mask > 0, axis=1).astype(jnp.int32)
      # nn.RNN's carry with seq_lengths is each sequence's state at its last real frame.
      pooled, _ = nn.RNN(nn.GRUCell(self.hidden, name="gru"), return_carry=True)(
          features, seq_lengths=lengths)
    else:
      raise ValueError(f"Unknown temporal head {self.head!r}; valid: {', '.join(HEADS[1:])}")
    pooled = nn.Dropout(self.drop_rate, deterministic=not train, name="head_drop")(pooled)
    return nn.Dense(self.num_classes, kernel_init=trunc_normal, name="head")(pooled)


def backbone_labels(params) -> dict:
  """"frozen" for every leaf under `backbone`, "trained" for the rest (the optimizer's
  partition for `optax.multi_transform` in frozen-features mode)."""
  return {k: jax.tree.map(lambda _: FROZEN if k == "backbone" else "trained", v)
          for k, v in params.items()}
