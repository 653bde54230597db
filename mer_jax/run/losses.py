"""Class-weighted cross-entropy and focal loss (jax.numpy).

Both losses take float logits [B, C], int labels [B] and an optional per-sample
``mask`` [B] (1 = real example, 0 = padding); masked samples contribute to
neither numerator nor denominator. They are jit-able and return float32
scalars; an all-masked batch gives 0.

Normalisation differs on purpose (document it when comparing runs):

* ``weighted_cross_entropy`` follows PyTorch's
  ``F.cross_entropy(weight=w, reduction='mean')``: ``sum_i w_{y_i} CE_i /
  sum_i w_{y_i}`` -- normalised by the summed weights of the batch.
* ``focal_loss`` is a plain mean over samples: ``sum_i alpha_{y_i} FL_i / N``
  -- NOT normalised by the summed alphas. With ``class_weights`` (whose mean
  over the training set is 1) the two agree in expectation, but not per batch.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
import jax

from mer_jax.plumbing.choices import Choice


class Loss(Choice):
  """`config.loss.name`: focal loss, class-weighted CE, or plain CE."""
  FOCAL = "focal"
  WEIGHTED_CE = "weighted_ce"
  CE = "ce"

  @classmethod
  def noun(cls) -> str:
    return "loss.name"


def class_weights(counts, normalize=True) -> np.ndarray:
  """Inverse-frequency class weights as np.float32.

  ``w_c = N / (K * n_c)`` for classes with ``n_c > 0``, where ``N = sum n_c``
  and ``K`` is the number of classes with ``n_c > 0``; so the weighted mean
  over the training set, ``sum_c n_c w_c / N``, is 1. An absent class
  (``n_c == 0``) gets weight 0 (it has no training examples, so its weight
  never enters a loss; 0 avoids an inf). With ``normalize=False`` the raw
  ``1 / n_c`` (0 for absent classes).
  """
  counts = np.asarray(counts, np.float64).ravel()
  if np.any(counts < 0):
    raise ValueError("class counts must be non-negative")
  present = counts > 0
  if not present.any():
    raise ValueError("class_weights needs at least one class with a positive count")
  inv = np.where(present, 1.0 / np.where(present, counts, 1.0), 0.0)
  if normalize:
    inv = inv * counts.sum() / present.sum()
  return inv.astype(np.float32)


def _prepare(logits, labels, mask):
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels).astype(jnp.int32)
  num_classes = logits.shape[-1]
  logp = jax.nn.log_softmax(logits, axis=-1)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logp.dtype)
  m = jnp.ones(labels.shape, logp.dtype) if mask is None else jnp.asarray(mask, logp.dtype)
  return logp, onehot, m, num_classes


def weighted_cross_entropy(logits, labels, weights=None, label_smoothing=0.0, mask=None):
  """PyTorch-convention (optionally class-weighted, label-smoothed) cross-entropy.

  Without smoothing: ``sum_i m_i w_{y_i} nll_i / sum_i m_i w_{y_i}``.
  With smoothing ``eps`` (as torch's ``F.cross_entropy(weight=w,
  label_smoothing=eps)``)::

      (1 - eps) * sum_i m_i w_{y_i} nll_i / sum_i m_i w_{y_i}
        + eps / C * sum_i m_i sum_c w_c (-log p_ic) / sum_i m_i w_{y_i}

  ``weights=None`` means all ones (then it is the plain mean over unmasked
  samples).
  """
  logp, onehot, m, c = _prepare(logits, labels, mask)
  w = jnp.ones((c,), logp.dtype) if weights is None else jnp.asarray(weights, logp.dtype)
  w_y = (onehot * w).sum(-1) * m                        # [B] weight of each sample
  denom = w_y.sum()
  safe = jnp.where(denom > 0, denom, 1.0)
  nll = -(onehot * logp).sum(-1)
  loss = (w_y * nll).sum() / safe
  if label_smoothing:
    smooth = -(logp * w).sum(-1) * m                    # sum_c w_c (-log p_c)
    loss = (1.0 - label_smoothing) * loss + label_smoothing / c * smooth.sum() / safe
  return jnp.where(denom > 0, loss, 0.0)


def focal_loss(logits, labels, alpha=None, gamma=2.0, label_smoothing=0.0, mask=None):
  """Focal loss (Lin et al. 2017), mean over unmasked samples.

  ``loss_i = -alpha_{y_i} * sum_c q_c (1 - p_c)^gamma log p_c`` with ``q`` the
  target distribution: one-hot without smoothing (giving the usual
  ``-alpha_y (1 - p_y)^gamma log p_y``), ``(1 - eps) onehot + eps / C`` with
  smoothing ``eps``. ``alpha`` is a per-class array (e.g. ``class_weights``)
  or None (= 1). The result is ``sum_i m_i loss_i / sum_i m_i`` -- NOT
  normalised by the summed alphas (unlike ``weighted_cross_entropy``).

  Stable: log p from log_softmax, ``1 - p`` as ``-expm1(log p)``; the
  modulating factor has a finite (zero) gradient where ``p_c -> 1``, also for
  ``gamma = 0`` (where it is exactly 1, so the loss is alpha-weighted CE).
  """
  logp, onehot, m, c = _prepare(logits, labels, mask)
  if label_smoothing:
    q = (1.0 - label_smoothing) * onehot + label_smoothing / c
  else:
    q = onehot
  gamma = float(gamma)
  if gamma == 0.0:
    mod = jnp.ones_like(logp)
  else:
    one_minus_p = jnp.clip(-jnp.expm1(logp), 0.0, 1.0)
    pos = one_minus_p > 0
    safe = jnp.where(pos, one_minus_p, 1.0)
    mod = jnp.where(pos, safe ** gamma, 0.0)
  per = -(q * mod * logp).sum(-1)                        # [B]
  if alpha is not None:
    per = per * (onehot * jnp.asarray(alpha, logp.dtype)).sum(-1)
  n = m.sum()
  return jnp.where(n > 0, (per * m).sum() / jnp.where(n > 0, n, 1.0), 0.0)
