"""mer_jax.metrics against sklearn / scipy / naive references."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, recall_score)

from mer_jax import metrics
from mer_jax.data.labels import EMOTIONS

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


def _naive_stratified_idx(t, n_resamples, seed):
  """The documented stratified draw, one sample at a time: sample j becomes the
  u-th member (in index order) of its class, u ~ integers(0, n_class)."""
  sizes = np.array([np.sum(t == c) for c in t])
  u = np.random.default_rng(seed).integers(0, sizes, (n_resamples, len(t)))
  idx = np.empty_like(u)
  for b in range(n_resamples):
    for j in range(len(t)):
      idx[b, j] = np.flatnonzero(t == t[j])[u[b, j]]
  return idx


def _naive_cluster_idx(clusters, n_resamples, seed):
  """The documented cluster draw: G sorted cluster ids drawn with replacement,
  every sample of a drawn cluster taken along."""
  ids = sorted(set(clusters))
  draws = np.random.default_rng(seed).integers(0, len(ids), (n_resamples, len(ids)))
  return [np.concatenate([np.flatnonzero(np.asarray(clusters) == ids[g]) for g in row])
          for row in draws]


def test_bootstrap_matches_naive_sklearn_loop():
  t, p = _random_case(1, n=28)
  ref = _naive_boot(t, p, 200, seed=3)
  got = metrics.bootstrap_macro_f1(t, p, K, n_resamples=200, seed=3, stratify=False)
  np.testing.assert_allclose(got, ref, atol=1e-12)
  lo, hi = metrics.bootstrap_ci(t, p, K, n_resamples=200, level=0.9, seed=3, stratify=False)
  np.testing.assert_allclose([lo, hi], np.percentile(ref, [5, 95]), atol=1e-12)


def test_bootstrap_matches_scipy_percentile():
  t, p = _random_case(2, n=28)
  stat = lambda a, b: _sk_macro(a, b, f1_score)
  res = stats.bootstrap((t, p), stat, paired=True, vectorized=False, n_resamples=300,
                        confidence_level=0.95, method="percentile",
                        rng=np.random.default_rng(7))
  lo, hi = metrics.bootstrap_ci(t, p, K, n_resamples=300, level=0.95, seed=7, stratify=False)
  assert lo == pytest.approx(res.confidence_interval.low, abs=1e-9)
  assert hi == pytest.approx(res.confidence_interval.high, abs=1e-9)


def test_stratified_bootstrap_matches_naive_loop():
  t, p = _random_case(3, n=30)
  t[:2] = 4                              # a class with few samples among larger ones
  idx = _naive_stratified_idx(t, 150, seed=5)
  for i in idx:                          # the reference draw keeps every class's count
    np.testing.assert_array_equal(t[i], t)
  ref = np.array([_sk_macro(t[i], p[i], f1_score) for i in idx])
  got = metrics.bootstrap_macro_f1(t, p, K, n_resamples=150, seed=5)
  np.testing.assert_allclose(got, ref, atol=1e-12)
  assert metrics.bootstrap_ci(t, p, K, n_resamples=150, level=0.9, seed=5) == pytest.approx(
      tuple(np.percentile(ref, [5, 95])), abs=1e-12)


def test_stratified_bootstrap_keeps_a_single_video_class():
  # The case: 27 "others" predicted right, 1 "sadness" predicted as "others".
  others, sadness = EMOTIONS.index("others"), EMOTIONS.index("sadness")
  t = np.array([others] * 27 + [sadness])
  p = np.full(28, others)
  point = metrics.macro_f1(t, p, 7)                      # (F1 others + F1 sadness) / 2
  assert point == pytest.approx((2 * 27 / (28 + 27) + 0.0) / 2)
  lo, hi = metrics.bootstrap_ci(t, p, 7)
  assert hi <= 0.55
  # every resample keeps both classes, so (with all others right) it equals the point
  assert lo == pytest.approx(point) and hi == pytest.approx(point)
  # the i.i.d. bootstrap drops the sadness video in ~36 % of resamples: upper bound 1
  assert metrics.bootstrap_ci(t, p, 7, stratify=False)[1] == 1.0


def test_stratified_bootstrap_keeps_class_counts():
  # All predicted class 0: macro-F1 = F1_0 / 2 = (2 n0 / (n0 + n)) / 2 depends only on
  # the class counts, so it is constant iff every resample keeps them.
  t = np.array([0] * 5 + [1] * 3)
  p = np.zeros(8, int)
  f = metrics.bootstrap_macro_f1(t, p, 2, n_resamples=500)
  np.testing.assert_allclose(f, (2 * 5 / (5 + 8)) / 2, atol=1e-12)
  assert np.ptp(metrics.bootstrap_macro_f1(t, p, 2, n_resamples=500, stratify=False)) > 0.1


def test_stratified_bootstrap_distribution_matches_exact_enumeration():
  # Exact distribution of the stratified resample's macro-F1: each class's n_c samples are
  # drawn uniformly with replacement from its members, all n_c ** n_c tuples equally likely.
  t = np.array([0, 0, 1, 1, 1, 2, 2])
  p = np.array([0, 1, 1, 0, 2, 2, 0])
  classes = [np.flatnonzero(t == c) for c in range(3)]
  values = []
  for parts in itertools.product(*[itertools.product(m, repeat=len(m)) for m in classes]):
    i = np.concatenate(parts)
    values.append(_sk_macro(t[i], p[i], f1_score))
  values = np.array(values)
  b = 40000
  got = metrics.bootstrap_macro_f1(t, p, 3, n_resamples=b, seed=1)
  assert got.mean() == pytest.approx(values.mean(), abs=5 * values.std() / np.sqrt(b))
  for x in np.quantile(values, [0.1, 0.5, 0.9]):
    q = np.mean(values <= x)
    assert np.mean(got <= x) == pytest.approx(q, abs=5 * np.sqrt(q * (1 - q) / b))


def test_cluster_bootstrap_matches_naive_loop():
  t, p = _random_case(8, n=30)
  clusters = np.array([f"sub{(7 * i) % 9:02d}" for i in range(30)])   # 9 unsorted subjects
  ref = np.array([_sk_macro(t[i], p[i], f1_score)
                  for i in _naive_cluster_idx(clusters, 200, seed=2)])
  for stratify in (True, False):                       # ignored with clusters
    got = metrics.bootstrap_macro_f1(t, p, K, 200, seed=2, stratify=stratify,
                                     clusters=clusters)
    np.testing.assert_allclose(got, ref, atol=1e-12)
  # one sample per cluster is the i.i.d. bootstrap
  np.testing.assert_allclose(metrics.bootstrap_macro_f1(t, p, K, 200, clusters=np.arange(30)),
                             _naive_boot(t, p, 200, seed=0), atol=1e-12)
  with pytest.raises(ValueError, match="one id per sample"):
    metrics.bootstrap_ci(t, p, K, clusters=clusters[:-1])


def test_bootstrap_deterministic_seed_dependent_contains_point():
  t, p = _random_case(4, n=28)
  a = metrics.bootstrap_ci(t, p, K, n_resamples=1000, seed=0)
  assert a == metrics.bootstrap_ci(t, p, K, n_resamples=1000, seed=0)
  assert a != metrics.bootstrap_ci(t, p, K, n_resamples=1000, seed=1)
  point = metrics.classification_report(t, p, K)["macro_f1"]
  assert a[0] < point < a[1]
  assert 0.0 <= a[0] and a[1] <= 1.0
  with pytest.raises(ValueError, match="n_resamples"):
    metrics.bootstrap_ci(t, p, K, n_resamples=0)


@pytest.mark.parametrize("kind", ["iid", "stratified", "cluster"])
def test_bootstrap_chunking_does_not_change_the_draw(monkeypatch, kind):
  t, p = _random_case(5, n=30)
  kw = {"stratify": kind == "stratified", "clusters": np.arange(30) % 11 if kind == "cluster"
        else None}
  full = metrics.bootstrap_macro_f1(t, p, K, n_resamples=250, seed=11, **kw)
  monkeypatch.setattr(metrics, "_MAX_CHUNK_ELEMS", 30 * 7)   # chunks of 7 (or 19) resamples
  chunked = metrics.bootstrap_macro_f1(t, p, K, n_resamples=250, seed=11, **kw)
  np.testing.assert_array_equal(full, chunked)


def test_paired_bootstrap():
  t, a = _random_case(6, n=40)
  rng = np.random.default_rng(0)
  b = np.where(rng.random(40) < 0.6, rng.integers(0, K, 40), a)   # worse than a
  r = metrics.paired_bootstrap(t, a, b, K, n_resamples=600, seed=0, stratify=False)
  assert r["f1_a"] == pytest.approx(_sk_macro(t, a, f1_score), abs=1e-12)
  assert r["f1_b"] == pytest.approx(_sk_macro(t, b, f1_score), abs=1e-12)
  assert r["diff"] == pytest.approx(r["f1_a"] - r["f1_b"], abs=1e-12)
  assert r["n_resamples"] == 600
  # reference: naive loop on the same (i.i.d.) indices
  idx = np.random.default_rng(0).integers(0, 40, (600, 40))
  dd = np.array([_sk_macro(t[i], a[i], f1_score) - _sk_macro(t[i], b[i], f1_score)
                 for i in idx])
  np.testing.assert_allclose(r["ci"], np.percentile(dd, [2.5, 97.5]), atol=1e-12)
  rr = min(600, 2 * min(np.sum(dd <= 0), np.sum(dd >= 0)))
  assert r["p_value"] == pytest.approx((rr + 1) / 601)
  assert r["ci"][0] <= r["diff"] <= r["ci"][1]
  # identical predictions: diff 0, CI (0, 0), p = 1
  same = metrics.paired_bootstrap(t, a, a, K, n_resamples=500)
  assert same["diff"] == 0.0 and same["ci"] == (0.0, 0.0) and same["p_value"] == 1.0
  # swapping a and b negates diff and CI, keeps p
  sw = metrics.paired_bootstrap(t, b, a, K, n_resamples=600, seed=0, stratify=False)
  assert sw["diff"] == pytest.approx(-r["diff"])
  assert sw["ci"][0] == pytest.approx(-r["ci"][1]) and sw["ci"][1] == pytest.approx(-r["ci"][0])
  assert sw["p_value"] == pytest.approx(r["p_value"])


@pytest.mark.parametrize("kw", [{}, {"clusters": np.arange(40) // 4}])
def test_paired_bootstrap_scores_both_on_the_same_resamples(kw):
  # stratified (default) and clustered: the differences are those of bootstrap_macro_f1's
  # resamples (the naive loops above check those against sklearn).
  t, a = _random_case(9, n=40)
  b = np.roll(a, 3)
  r = metrics.paired_bootstrap(t, a, b, K, n_resamples=700, seed=4, **kw)
  dd = (metrics.bootstrap_macro_f1(t, a, K, 700, seed=4, **kw)
        - metrics.bootstrap_macro_f1(t, b, K, 700, seed=4, **kw))
  np.testing.assert_allclose(r["ci"], np.percentile(dd, [2.5, 97.5]), atol=1e-12)
  rr = min(700, 2 * min(np.sum(dd <= 0), np.sum(dd >= 0)))
  assert r["p_value"] == pytest.approx((rr + 1) / 701)


def test_paired_bootstrap_of_uar_matches_naive_cluster_loop():
  """score="uar": the full-set UAR difference and the subject-clustered interval of the
  resampled differences equal sklearn's recall on the documented cluster draws."""
  t, a = _random_case(11, n=36)
  b = np.roll(a, 5)
  clusters = np.array([f"s{(5 * i) % 9}" for i in range(36)])
  r = metrics.paired_bootstrap(t, a, b, K, n_resamples=300, seed=2, clusters=clusters,
                               score="uar")
  assert r["f1_a"] == pytest.approx(_sk_macro(t, a, recall_score), abs=1e-12)
  assert r["diff"] == pytest.approx(_sk_macro(t, a, recall_score)
                                    - _sk_macro(t, b, recall_score), abs=1e-12)
  dd = np.array([_sk_macro(t[i], a[i], recall_score) - _sk_macro(t[i], b[i], recall_score)
                 for i in _naive_cluster_idx(clusters, 300, seed=2)])
  np.testing.assert_allclose(r["ci"], np.percentile(dd, [2.5, 97.5]), atol=1e-12)
  rr = min(300, 2 * min(np.sum(dd <= 0), np.sum(dd >= 0)))
  assert r["p_value"] == pytest.approx((rr + 1) / 301)
  with pytest.raises(ValueError, match="score must be one of macro_f1, uar"):
    metrics.paired_bootstrap(t, a, b, K, score="accuracy")


def test_paired_bootstrap_p_value_floor():
  t = np.tile(np.arange(K), 8)
  a = t.copy()
  b = (t + 1) % K
  b[:5] = t[:5]
  for kw in ({}, {"stratify": False}, {"clusters": np.arange(40) % 8}):
    r = metrics.paired_bootstrap(t, a, b, K, n_resamples=1000, **kw)
    assert r["diff"] > 0.5 and r["ci"][0] > 0
    assert r["p_value"] == 1 / 1001                  # no resample reaches 0; never 0
    assert metrics.format_p(r["p_value"], 1000) == "< 0.001"


def test_holm_by_hand_and_against_statsmodels():
  # hand: sorted 0.01, 0.03, 0.04, 0.5 -> 4*.01, 3*.03, max(2*.04, .09), max(1*.5, .09)
  assert metrics.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
  assert metrics.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])      # capped monotone
  assert metrics.holm([0.7, 0.9]) == pytest.approx([1.0, 1.0])      # capped at 1
  assert metrics.holm([]) == []
  with pytest.raises(ValueError):
    metrics.holm([0.1, 1.5])
  multitest = pytest.importorskip("statsmodels.stats.multitest")
  rng = np.random.default_rng(0)
  for m in (1, 2, 5, 12):
    p = rng.random(m) ** 3
    p[:m // 3] = p[-1]                                               # ties
    ref = multitest.multipletests(p, method="holm")[1]
    np.testing.assert_allclose(metrics.holm(p), ref, atol=1e-12)


def test_format_p():
  assert metrics.format_p(1 / 10001, 10000) == "< 0.0001"
  assert metrics.format_p(1 / 2001, 2000) == "< 0.0005"
  assert metrics.format_p(3 / 10001, 10000) == "0.000300"
  assert metrics.format_p(0.04512, 1000) == "0.0451"
  assert metrics.format_p(0.262, 10000) == "0.262"
  assert metrics.format_p(1.0, 10000) == "1.00"
  assert metrics.format_p(None, 1000) == "—" and metrics.format_p(float("nan"), 1000) == "—"


@pytest.mark.parametrize("kw", [{}, {"stratify": False}, {"clusters": np.arange(30) % 7}])
def test_seed_mean_ci_one_seed_is_bootstrap_ci(kw):
  t, p = _random_case(10, n=30)
  assert metrics.seed_mean_ci(t, p[None], K, n_resamples=400, seed=3, **kw) == \
      metrics.bootstrap_ci(t, p, K, n_resamples=400, seed=3, **kw)


def test_seed_mean_ci_matches_naive_loop():
  t, p0 = _random_case(11, n=24)
  rng = np.random.default_rng(1)
  preds = np.stack([np.where(rng.random(24) < 0.3, rng.integers(0, K, 24), p0)
                    for _ in range(3)])
  b = 300
  idx = _naive_stratified_idx(t, b, seed=6)
  seeds = np.random.default_rng((6, 1)).integers(0, 3, (b, 3))
  ref = np.array([np.mean([_sk_macro(t[i], preds[s][i], f1_score) for s in row])
                  for i, row in zip(idx, seeds)])
  got = metrics.seed_mean_ci(t, preds, K, n_resamples=b, level=0.9, seed=6)
  np.testing.assert_allclose(got, np.percentile(ref, [5, 95]), atol=1e-12)
  with pytest.raises(ValueError, match="seeds, samples"):
    metrics.seed_mean_ci(t, preds[0], K)


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
