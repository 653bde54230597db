"""mer_jax.metrics against sklearn / scipy / naive references."""

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, recall_score)

from mer_jax import metrics

K = 5


def _sk_macro(t, p, fn):
  present = np.unique(t)
  return fn(t, p, labels=present, average="macro", zero_division=0)


def _random_case(seed, n=40, k=K):
  rng = np.random.default_rng(seed)
  t = rng.integers(0, k, n)
  p = np.where(rng.random(n) < 0.5, t, rng.integers(0, k, n))
  return t, p


# --- classification_report ---------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_report_matches_sklearn(seed):
  t, p = _random_case(seed, n=10 + 7 * seed)
  r = metrics.classification_report(t, p, K)
  assert r["macro_f1"] == pytest.approx(_sk_macro(t, p, f1_score), abs=1e-12)
  assert r["uar"] == pytest.approx(_sk_macro(t, p, recall_score), abs=1e-12)
  assert r["accuracy"] == pytest.approx(accuracy_score(t, p), abs=1e-12)
  np.testing.assert_array_equal(r["confusion"], confusion_matrix(t, p, labels=range(K)))
  assert r["n"] == len(t)
  assert r["support"] == np.bincount(t, minlength=K).tolist()
  sk_f1 = f1_score(t, p, labels=range(K), average=None, zero_division=0)
  sk_rec = recall_score(t, p, labels=range(K), average=None, zero_division=0)
  for c in range(K):
    if r["support"][c]:
      assert r["per_class_f1"][c] == pytest.approx(sk_f1[c], abs=1e-12)
      assert r["per_class_recall"][c] == pytest.approx(sk_rec[c], abs=1e-12)
    else:
      assert math.isnan(r["per_class_f1"][c]) and math.isnan(r["per_class_recall"][c])


def test_absent_class_predicted_is_excluded_from_macro():
  # class 2 never occurs in y_true but is predicted once; class 3 absent entirely.
  t = np.array([0, 0, 1, 1, 1, 4])
  p = np.array([0, 2, 1, 1, 0, 4])
  r = metrics.classification_report(t, p, K)
  # hand: F1_0 = 2*1/(2+2) = .5 ; F1_1 = 2*2/(3+2) = .8 ; F1_4 = 1
  assert r["per_class_f1"][0] == pytest.approx(0.5)
  assert r["per_class_f1"][1] == pytest.approx(0.8)
  assert r["per_class_f1"][4] == pytest.approx(1.0)
  assert math.isnan(r["per_class_f1"][2]) and math.isnan(r["per_class_f1"][3])
  assert r["macro_f1"] == pytest.approx((0.5 + 0.8 + 1.0) / 3)
  assert r["uar"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
  assert r["accuracy"] == pytest.approx(4 / 6)
  assert r["confusion"][0] == [1, 0, 1, 0, 0]
  assert r["macro_f1"] == pytest.approx(_sk_macro(t, p, f1_score))
  # sklearn's plain macro over all labels would differ (includes class 2's F1 = 0)
  assert f1_score(t, p, average="macro", zero_division=0) < r["macro_f1"]


def test_present_class_never_predicted_has_zero_f1():
  t = np.array([0, 1, 1, 2])
  p = np.array([0, 0, 0, 2])
  r = metrics.classification_report(t, p, 3)
  assert r["per_class_f1"][1] == 0.0 and r["per_class_recall"][1] == 0.0
  assert r["macro_f1"] == pytest.approx(_sk_macro(t, p, f1_score))


def test_all_correct_and_single_class():
  t = np.array([3, 1, 0, 3, 1])
  r = metrics.classification_report(t, t, K)
  assert r["macro_f1"] == r["uar"] == r["accuracy"] == 1.0
  s = metrics.classification_report([2, 2, 2], [2, 2, 0], K)
  assert s["macro_f1"] == pytest.approx(0.8)          # 2*2/(3+2)
  assert s["uar"] == pytest.approx(2 / 3)
  assert sum(not math.isnan(v) for v in s["per_class_f1"]) == 1


def test_report_rejects_bad_input():
  with pytest.raises(ValueError):
    metrics.classification_report([0, 5], [0, 1], K)
  with pytest.raises(ValueError):
    metrics.classification_report([0, 1], [0], K)


# --- bootstrap ----------------------------------------------------------------

def _naive_boot(t, p, n_resamples, seed):
  idx = np.random.default_rng(seed).integers(0, len(t), (n_resamples, len(t)))
  return np.array([_sk_macro(t[i], p[i], f1_score) for i in idx])


def test_bootstrap_matches_naive_sklearn_loop():
  t, p = _random_case(1, n=28)
  ref = _naive_boot(t, p, 200, seed=3)
  got = metrics.bootstrap_macro_f1(t, p, K, n_resamples=200, seed=3)
  np.testing.assert_allclose(got, ref, atol=1e-12)
  lo, hi = metrics.bootstrap_ci(t, p, K, n_resamples=200, level=0.9, seed=3)
  np.testing.assert_allclose([lo, hi], np.percentile(ref, [5, 95]), atol=1e-12)


def test_bootstrap_matches_scipy_percentile():
  t, p = _random_case(2, n=28)
  stat = lambda a, b: _sk_macro(a, b, f1_score)
  res = stats.bootstrap((t, p), stat, paired=True, vectorized=False, n_resamples=300,
                        confidence_level=0.95, method="percentile",
                        rng=np.random.default_rng(7))
  lo, hi = metrics.bootstrap_ci(t, p, K, n_resamples=300, level=0.95, seed=7)
  assert lo == pytest.approx(res.confidence_interval.low, abs=1e-9)
  assert hi == pytest.approx(res.confidence_interval.high, abs=1e-9)


def test_bootstrap_deterministic_seed_dependent_contains_point():
  t, p = _random_case(4, n=28)
  a = metrics.bootstrap_ci(t, p, K, n_resamples=1000, seed=0)
  assert a == metrics.bootstrap_ci(t, p, K, n_resamples=1000, seed=0)
  assert a != metrics.bootstrap_ci(t, p, K, n_resamples=1000, seed=1)
  point = metrics.classification_report(t, p, K)["macro_f1"]
  assert a[0] < point < a[1]
  assert 0.0 <= a[0] and a[1] <= 1.0


def test_bootstrap_chunking_does_not_change_the_draw(monkeypatch):
  t, p = _random_case(5, n=30)
  full = metrics.bootstrap_macro_f1(t, p, K, n_resamples=250, seed=11)
  monkeypatch.setattr(metrics, "_MAX_CHUNK_ELEMS", 30 * 7)   # chunks of 7 resamples
  chunked = metrics.bootstrap_macro_f1(t, p, K, n_resamples=250, seed=11)
  np.testing.assert_array_equal(full, chunked)


def test_paired_bootstrap():
  t, a = _random_case(6, n=40)
  rng = np.random.default_rng(0)
  b = np.where(rng.random(40) < 0.6, rng.integers(0, K, 40), a)   # worse than a
  r = metrics.paired_bootstrap(t, a, b, K, n_resamples=2000, seed=0)
  full = _sk_macro(t, a, f1_score) - _sk_macro(t, b, f1_score)
  assert r["diff"] == pytest.approx(full, abs=1e-12)
  assert r["n_resamples"] == 2000
  # reference: naive loop on the same indices
  idx = np.random.default_rng(0).integers(0, 40, (2000, 40))
  d = np.array([_sk_macro(t[i], a[i], f1_score) - _sk_macro(t[i], b[i], f1_score)
                for i in idx[:100]])
  got = (metrics.bootstrap_macro_f1(t, a, K, 100, seed=0)
         - metrics.bootstrap_macro_f1(t, b, K, 100, seed=0))
  np.testing.assert_allclose(got, d, atol=1e-12)
  # full reference for ci / p on all 2000
  da = metrics.bootstrap_macro_f1(t, a, K, 2000, seed=0)
  db = metrics.bootstrap_macro_f1(t, b, K, 2000, seed=0)
  dd = da - db
  np.testing.assert_allclose(r["ci"], np.percentile(dd, [2.5, 97.5]), atol=1e-12)
  p_ref = min(1.0, 2 * min(np.mean(dd <= 0), np.mean(dd >= 0)))
  assert r["p_value"] == pytest.approx(p_ref)
  assert r["ci"][0] <= r["diff"] <= r["ci"][1]
  # identical predictions: diff 0, CI (0, 0), p = 1
  same = metrics.paired_bootstrap(t, a, a, K, n_resamples=500)
  assert same["diff"] == 0.0 and same["ci"] == (0.0, 0.0) and same["p_value"] == 1.0
  # swapping a and b negates diff and CI, keeps p
  sw = metrics.paired_bootstrap(t, b, a, K, n_resamples=2000, seed=0)
  assert sw["diff"] == pytest.approx(-r["diff"])
  assert sw["ci"][0] == pytest.approx(-r["ci"][1]) and sw["ci"][1] == pytest.approx(-r["ci"][0])
  assert sw["p_value"] == pytest.approx(r["p_value"])


def test_paired_bootstrap_clear_difference_has_small_p():
  t = np.tile(np.arange(K), 8)
  a = t.copy()
  b = (t + 1) % K
  b[:5] = t[:5]
  r = metrics.paired_bootstrap(t, a, b, K, n_resamples=1000)
  assert r["diff"] > 0.5 and r["p_value"] < 0.01 and r["ci"][0] > 0


# --- video level --------------------------------------------------------------

def test_video_vote_majority_and_sorting():
  probs = np.array([
      [0.6, 0.3, 0.1],   # vb -> 0
      [0.1, 0.8, 0.1],   # vb -> 1
      [0.2, 0.7, 0.1],   # vb -> 1
      [0.1, 0.1, 0.8],   # va -> 2
  ])
  ids = ["vb", "vb", "vb", "va"]
  vids, pred = metrics.video_vote(probs, ids)
  assert vids.tolist() == ["va", "vb"]
  assert pred.tolist() == [2, 1]
  assert pred.dtype.kind == "i" and vids.dtype.kind == "U"


def test_video_vote_ties():
  # two votes each for classes 0 and 2; summed prob of class 2 larger -> 2.
  probs = np.array([[0.5, 0.0, 0.5 - 1e-3],
                    [0.4, 0.3, 0.3],
                    [0.1, 0.3, 0.6],
                    [0.1, 0.0, 0.9]])
  _, pred = metrics.video_vote(probs, ["x"] * 4)
  assert pred.tolist() == [2]
  # a class with a larger prob sum but fewer votes does not win
  probs2 = np.array([[0.9, 0.05, 0.05], [0.45, 0.55, 0.0], [0.45, 0.55, 0.0]])
  _, pred2 = metrics.video_vote(probs2, ["y"] * 3)   # votes 1:2, 0:1; sums 0:1.8, 1:1.15
  assert pred2.tolist() == [1]
  probs3 = np.array([[0.6, 0.1, 0.3], [0.5, 0.1, 0.4], [0.1, 0.6, 0.3], [0.2, 0.6, 0.2]])
  _, pred3 = metrics.video_vote(probs3, ["z"] * 4)   # votes 0:2, 1:2; sums 0:1.4, 1:1.4
  # exact tie of sums -> lowest index
  assert pred3.tolist() == [0]


def test_video_probs_and_labels():
  probs = np.array([[0.2, 0.8], [0.6, 0.4], [1.0, 0.0]])
  ids = np.array(["b", "b", "a"])
  vids, mp = metrics.video_probs(probs, ids)
  assert vids.tolist() == ["a", "b"]
  np.testing.assert_allclose(mp, [[1.0, 0.0], [0.4, 0.6]])
  vids, lab = metrics.video_labels([1, 1, 0], ids)
  assert vids.tolist() == ["a", "b"] and lab.tolist() == [0, 1]
  with pytest.raises(ValueError):
    metrics.video_labels([1, 0, 0], ids)


def test_mean_std():
  assert metrics.mean_std([1.0, 2.0, 3.0, float("nan")]) == pytest.approx((2.0, 1.0))
  assert metrics.mean_std([0.5]) == (0.5, 0.0)
  m, s = metrics.mean_std([float("nan")])
  assert math.isnan(m) and math.isnan(s)
  x = np.array([0.3, 0.9, 0.4, 0.7])
  assert metrics.mean_std(x) == pytest.approx((x.mean(), np.std(x, ddof=1)))


def test_metrics_module_does_not_import_jax():
  import ast, inspect
  tree = ast.parse(inspect.getsource(metrics))
  names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
           for a in n.names}
  mods = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
  assert "jax" not in names | mods
