"""mer_jax.run.losses against hand-computed values and torch.nn.functional.cross_entropy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax.run import losses

LN2 = float(np.log(2.0))

# Hand example: softmax(log([1,2,1])) = [.25,.5,.25]; softmax(log([1,1,2])) = [.25,.25,.5].
LOGITS = np.log(np.array([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0]], np.float32))
LABELS = np.array([1, 0])
W = np.array([2.0, 1.0, 0.5], np.float32)
# -log p: sample 0 -> [2, 1, 2] ln2 ; sample 1 -> [2, 2, 1] ln2 ; CE = [ln2, 2 ln2]


def _close(a, b, tol=1e-5):
  assert float(a) == pytest.approx(float(b), rel=tol, abs=tol)


# --- class_weights -------------------------------------------------------------

def test_class_weights():
  counts = np.array([10, 0, 30, 60])
  w = losses.class_weights(counts)
  assert w.dtype == np.float32
  np.testing.assert_allclose(w, [100 / 30, 0.0, 100 / 90, 100 / 180], rtol=1e-6)
  assert float((counts * w).sum() / counts.sum()) == pytest.approx(1.0, rel=1e-6)
  np.testing.assert_allclose(losses.class_weights(counts, normalize=False),
                             [0.1, 0.0, 1 / 30, 1 / 60], rtol=1e-6)
  np.testing.assert_allclose(losses.class_weights([5, 5, 5]), [1, 1, 1])
  with pytest.raises(ValueError):
    losses.class_weights([0, 0])


# --- weighted_cross_entropy -----------------------------------------------------

def test_ce_hand_values():
  _close(losses.weighted_cross_entropy(LOGITS, LABELS), 1.5 * LN2)
  # w_y = [1, 2]: (1*ln2 + 2*2ln2) / 3
  _close(losses.weighted_cross_entropy(LOGITS, LABELS, W), 5 / 3 * LN2)
  # eps = .3: q0 = [.1,.8,.1] -> 1.2 ln2 ; q1 = [.8,.1,.1] -> 1.9 ln2
  _close(losses.weighted_cross_entropy(LOGITS, LABELS, label_smoothing=0.3), 1.55 * LN2)
  # weighted + smoothed (torch): .7 * 5/3 ln2 + .1 * (6 + 6.5) ln2 / 3
  _close(losses.weighted_cross_entropy(LOGITS, LABELS, W, label_smoothing=0.3),
         4.75 / 3 * LN2)


def _torch_ce(logits, labels, weight=None, eps=0.0, mask=None):
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  lab = np.asarray(labels).copy()
  if mask is not None:
    lab[np.asarray(mask) == 0] = -100           # torch's ignore_index
  return F.cross_entropy(torch.tensor(np.asarray(logits, np.float64)),
                         torch.tensor(lab, dtype=torch.long),
                         weight=None if weight is None else torch.tensor(
                             np.asarray(weight, np.float64)),
                         label_smoothing=eps).item()


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_ce_matches_torch(eps, weighted, masked):
  rng = np.random.default_rng(int(eps * 10) + 2 * weighted + 4 * masked)
  logits = (3 * rng.standard_normal((16, 5))).astype(np.float32)
  labels = rng.integers(0, 5, 16)
  w = rng.uniform(0.2, 3.0, 5).astype(np.float32) if weighted else None
  mask = (rng.random(16) < 0.7).astype(np.float32) if masked else None
  if masked:
    mask[0] = 1.0
  got = losses.weighted_cross_entropy(logits, labels, w, label_smoothing=eps, mask=mask)
  _close(got, _torch_ce(logits, labels, w, eps, mask), tol=1e-5)


def test_ce_mask_ignores_padding_and_all_masked_is_zero():
  pad_logits = np.vstack([LOGITS, [[50.0, -50.0, 0.0]]])
  pad_labels = np.append(LABELS, 1)
  mask = np.array([1.0, 1.0, 0.0])
  for kw in ({}, {"weights": W}, {"weights": W, "label_smoothing": 0.3}):
    _close(losses.weighted_cross_entropy(pad_logits, pad_labels, mask=mask, **kw),
           losses.weighted_cross_entropy(LOGITS, LABELS, **kw))
  assert float(losses.weighted_cross_entropy(LOGITS, LABELS, W, mask=np.zeros(2))) == 0.0


# --- focal_loss -----------------------------------------------------------------

def test_focal_hand_values():
  # gamma=2: (1-.5)^2 ln2 and (1-.25)^2 2ln2 -> mean .6875 ln2
  _close(losses.focal_loss(LOGITS, LABELS, gamma=2.0), 0.6875 * LN2)
  # alpha_y = [1, 2]: (.25 + 2 * 1.125) / 2 ln2  (NOT divided by the alpha sum)
  _close(losses.focal_loss(LOGITS, LABELS, alpha=W, gamma=2.0), 1.25 * LN2)
  # smoothed eps=.3: sample 0 -> .425 ln2, sample 1 -> 1.0375 ln2
  _close(losses.focal_loss(LOGITS, LABELS, gamma=2.0, label_smoothing=0.3), 0.73125 * LN2)
  _close(losses.focal_loss(LOGITS, LABELS, alpha=W, gamma=2.0, label_smoothing=0.3),
         (0.425 + 2 * 1.0375) / 2 * LN2)


def _np_focal(logits, labels, alpha, gamma, eps):
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  p = np.exp(logp)
  c = logits.shape[1]
  q = (1 - eps) * np.eye(c)[labels] + eps / c
  per = -(q * (1 - p) ** gamma * logp).sum(-1)
  a = np.ones(c) if alpha is None else alpha
  return float((a[labels] * per).mean())


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_focal_matches_numpy_reference(gamma, eps):
  rng = np.random.default_rng(int(gamma * 10 + eps * 100))
  logits = (2 * rng.standard_normal((12, 4))).astype(np.float64)
  labels = rng.integers(0, 4, 12)
  alpha = rng.uniform(0.5, 2.0, 4)
  for a in (None, alpha):
    _close(losses.focal_loss(logits, labels, alpha=a, gamma=gamma, label_smoothing=eps),
           _np_focal(logits, labels, a, gamma, eps), tol=1e-5)


def test_focal_gamma0_equals_ce():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((10, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 10)
  _close(losses.focal_loss(logits, labels, gamma=0.0),
         losses.weighted_cross_entropy(logits, labels))
  _close(losses.focal_loss(logits, labels, gamma=0.0, label_smoothing=0.1),
         losses.weighted_cross_entropy(logits, labels, label_smoothing=0.1))
  # alpha=w, gamma=0 -> sum_i w_{y_i} CE_i / N, differing from torch's / sum_i w_{y_i}
  w = losses.class_weights([3, 1, 2, 5, 4])
  ce_i = -jax.nn.log_softmax(logits)[np.arange(10), labels]
  expected = float((w[labels] * ce_i).sum() / 10)
  _close(losses.focal_loss(logits, labels, alpha=w, gamma=0.0), expected)
  wce = losses.weighted_cross_entropy(logits, labels, w)
  _close(wce, float((w[labels] * ce_i).sum() / w[labels].sum()))
  _close(expected / float(wce), float(w[labels].sum() / 10))


def test_focal_mask():
  pad_logits = np.vstack([LOGITS, [[50.0, -50.0, 0.0]]])
  pad_labels = np.append(LABELS, 1)
  mask = np.array([1.0, 1.0, 0.0])
  for kw in ({"gamma": 2.0}, {"gamma": 2.0, "alpha": W, "label_smoothing": 0.3}):
    _close(losses.focal_loss(pad_logits, pad_labels, mask=mask, **kw),
           losses.focal_loss(LOGITS, LABELS, **kw))
  assert float(losses.focal_loss(LOGITS, LABELS, mask=np.zeros(2))) == 0.0


# --- jit and gradients -------------------------------------------------------------

def test_jit_and_extreme_logit_gradients():
  logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 1e4]], jnp.float32)
  labels = jnp.array([0, 0, 2])      # p_y -> 1, p_y -> 0, p_y -> 1
  mask = jnp.array([1.0, 1.0, 0.0])
  fns = [
      functools.partial(losses.weighted_cross_entropy, weights=W),
      functools.partial(losses.weighted_cross_entropy, weights=W, label_smoothing=0.1),
      functools.partial(losses.focal_loss, alpha=W, gamma=2.0),
      functools.partial(losses.focal_loss, alpha=W, gamma=0.5, label_smoothing=0.1),
      functools.partial(losses.focal_loss, gamma=0.0),
  ]
  cases = [(fn, m) for fn in fns for m in (None, mask)]

  @jax.jit
  def all_vg(x):   # one compilation for every case
    return [jax.value_and_grad(lambda y, fn=fn, m=m: fn(y, labels, mask=m))(x)
            for fn, m in cases]

  for (fn, _), (val, g) in zip(cases, all_vg(logits)):
    assert np.isfinite(float(val)), fn
    assert np.all(np.isfinite(np.asarray(g))), fn
  # jitted value == eager value (one case each)
  _close(all_vg(logits)[3][0], fns[1](logits, labels, mask=mask), tol=1e-4)
  _close(all_vg(logits)[6][0], fns[3](logits, labels), tol=1e-4)
  # p_y -> 1 exactly: loss 0 and zero gradient for the focal term
  v, g = jax.value_and_grad(lambda x: losses.focal_loss(x, labels[:1], gamma=2.0))(logits[:1])
  assert float(v) == 0.0 and np.all(np.asarray(g) == 0.0)


def test_ce_gradient_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(3)
  logits = rng.standard_normal((6, 4))
  labels = rng.integers(0, 4, 6)
  w = rng.uniform(0.5, 2.0, 4)
  g = jax.grad(lambda x: losses.weighted_cross_entropy(x, labels, w, label_smoothing=0.1))(
      jnp.asarray(logits, jnp.float32))
  x = torch.tensor(logits, requires_grad=True)
  torch.nn.functional.cross_entropy(x, torch.tensor(labels), weight=torch.tensor(w),
                                    label_smoothing=0.1).backward()
  np.testing.assert_allclose(np.asarray(g), x.grad.numpy(), atol=1e-5)
