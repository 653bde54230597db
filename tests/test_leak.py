"""The leaky per-fold epoch choice (selection=test_fold_best_epoch) and per-dataset LOSO
figures, on hand-written runs (no training): against brute-force loops and sklearn."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from mer_jax import study
from mer_jax.analysis import leak
from mer_jax.data.labels import EMOTIONS
from mer_jax.run import report

EPOCHS = 5


def _write_csv(path, ids, subjects, datasets, y, p):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(report.PREDICTION_FIELDS)
    w.writerows([(v, s, d, EMOTIONS[t], EMOTIONS[q])
                 for v, s, d, t, q in zip(ids, subjects, datasets, y, p)])


def _macro(fn, y, p):
  return fn(y, p, labels=np.unique(y), average="macro", zero_division=0)


@pytest.fixture(scope="module")
def leaky_study(tmp_path_factory):
  """A LOSO cell of 6 subjects over two source datasets (subject "s1" in both): each fold
  has EPOCHS epochs of random test predictions and a validation-chosen epoch; the run's
  predictions_test.csv is that epoch's file, as a trained run's is. Report written."""
  root = tmp_path_factory.mktemp("leak")
  rng = np.random.default_rng(7)
  subjects = [("casme2", "s1"), ("casme2", "s2"), ("casme2", "s3"), ("samm", "s1"),
              ("samm", "s4"), ("samm", "s5")]
  truth = {}
  for fold, (dataset, subj) in enumerate(subjects):
    n = int(rng.integers(2, 6))
    ids = np.array([f"{dataset}_{subj}/EP{i:02d}" for i in range(n)])
    y = rng.integers(0, 5, n)
    epochs = [np.where(rng.random(n) < 0.45, y, rng.integers(0, 5, n)) for _ in range(EPOCHS)]
    best = int(rng.integers(1, EPOCHS + 1))
    cell = study.Cell("poolformer_s12", "m2", "af", 0, fold)
    w = cell.workdir(root)
    config = study.cell_config(cell, ["selection=test_fold_best_epoch"], "loso").to_dict()
    (w / report.EPOCH_PREDICTIONS).mkdir(parents=True)
    (w / "metrics.json").write_text(json.dumps({
        "config": config, "best_epoch": best, "validation": {"macro_f1": 0.5},
        "test": {"macro_f1": _macro(f1_score, y, epochs[best - 1])}}))
    for e, p in enumerate(epochs, 1):
      _write_csv(w / report.EPOCH_PREDICTIONS / report.EPOCH_FILE.format(epoch=e), ids,
                 [subj] * n, [dataset] * n, y, p)
    _write_csv(w / "predictions_test.csv", ids, [subj] * n, [dataset] * n, y, epochs[best - 1])
    truth[fold] = {"ids": ids, "y": y, "epochs": epochs, "best": best, "dataset": dataset,
                   "subject": subj}
  study.write_plan(root, study.plan(study.make_cells(["poolformer_s12"], ["m2"], ["af"], [0],
                                                     range(len(subjects))), "loso", "video",
                                    len(subjects)))
  assert study.main(["--workdir", str(root), "--report_only", "--bootstrap", "200"]) == 0
  return root, truth


def _brute_force(truth):
  """Per fold the epoch of highest test accuracy (sklearn; ties: the later epoch), pooled."""
  y, honest, leaky, clusters, chosen = [], [], [], [], {}
  for fold, t in truth.items():
    accs = [accuracy_score(t["y"], p) for p in t["epochs"]]
    e = max(e for e in range(1, EPOCHS + 1) if accs[e - 1] == max(accs))
    chosen[fold] = e
    y.append(t["y"])
    honest.append(t["epochs"][t["best"] - 1])
    leaky.append(t["epochs"][e - 1])
    clusters += [f"{t['dataset']}/{t['subject']}"] * len(t["y"])
  return (np.concatenate(y), np.concatenate(honest), np.concatenate(leaky),
          np.array(clusters), chosen)


def test_leaky_choice_equals_brute_force_and_honest_is_the_runs_own(leaky_study):
  root, truth = leaky_study
  (row,) = json.loads((root / "study.json").read_text())[leak.KEY]
  y, honest, leaky, _, chosen = _brute_force(truth)
  assert {e["fold"]: e["leaky"] for e in row["epochs"]} == chosen
  assert {e["fold"]: e["validation"] for e in row["epochs"]} == {
      f: t["best"] for f, t in truth.items()}
  assert row["uf1"]["leaky"] == pytest.approx(_macro(f1_score, y, leaky))
  assert row["uar"]["leaky"] == pytest.approx(_macro(recall_score, y, leaky))
  # The honest figure is today's LOSO result: the cell's pooled UF1/UAR from the runs' own
  # predictions_test.csv, i.e. the validation-chosen epochs.
  cell = json.loads((root / "study.json").read_text())["cells"]["poolformer_s12_m2_af"]
  assert row["uf1"]["honest"] == pytest.approx(_macro(f1_score, y, honest))
  assert row["uf1"]["honest"] == pytest.approx(cell["macro_f1"])
  assert row["uar"]["honest"] == pytest.approx(cell["uar"])
  assert row["uf1"]["inflation"] == pytest.approx(row["uf1"]["leaky"] - row["uf1"]["honest"])
  assert row["uf1"]["inflation"] > 0      # chosen on the test videos: never worse here
  text = (root / "report.md").read_text()
  assert "## Leaky: the epoch chosen on each test fold (test_fold_best_epoch) — NOT a result" \
      in text and "What this number leaks" in text and f"{row['uf1']['leaky']:.4f}" in text


def test_leaky_inflation_interval_resamples_subjects(leaky_study):
  """The inflation's CI (leak.leaky_units at 150 resamples) equals a naive sklearn loop over
  the documented subject-cluster draws (seed 0), the same subject name in two datasets
  being two clusters; the report's row (10,000 resamples) holds its point estimate."""
  from mer_jax.analysis import runs
  root, truth = leaky_study
  (row,) = leak.leaky_units(runs.gather(root), n_resamples=150)
  (full,) = json.loads((root / "study.json").read_text())[leak.KEY]
  y, honest, leaky, clusters, _ = _brute_force(truth)
  ids = sorted(set(clusters))
  assert len(ids) == 6
  draws = np.random.default_rng(0).integers(0, len(ids), (150, len(ids)))
  for name, fn in (("uf1", f1_score), ("uar", recall_score)):
    d = []
    for draw in draws:
      i = np.concatenate([np.flatnonzero(clusters == ids[g]) for g in draw])
      d.append(_macro(fn, y[i], leaky[i]) - _macro(fn, y[i], honest[i]))
    np.testing.assert_allclose(row[name]["ci"], np.percentile(d, [2.5, 97.5]), atol=1e-12)
    assert full[name]["n_resamples"] == 10000
    assert full[name]["ci"][0] <= full[name]["inflation"] <= full[name]["ci"][1]


def test_loso_reports_per_source_dataset(leaky_study):
  root, truth = leaky_study
  cell = json.loads((root / "study.json").read_text())["cells"]["poolformer_s12_m2_af"]
  y, honest, _, clusters, _ = _brute_force(truth)
  for d in ("casme2", "samm"):
    i = np.char.startswith(clusters, d + "/")
    got = cell["per_dataset"][d]
    assert got["uf1"] == pytest.approx(_macro(f1_score, y[i], honest[i]))
    assert got["uar"] == pytest.approx(_macro(recall_score, y[i], honest[i]))
    assert got["subjects"] == 3 and got["videos"] == int(i.sum())
  assert "### Per source dataset (the MEGC convention)" in (root / "report.md").read_text()
