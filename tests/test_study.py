"""A small study on a tiny synthetic CASME II: cells run, resume, and the report's
numbers equal the per-run metrics.json files and independent references."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score

from mer_jax import metrics, study
from mer_jax.data.labels import EMOTIONS
from e2e import study_args
from tiny import E2E_MODEL


@pytest.fixture
def tiny(casme2_small):
  """The session's small synthetic CASME II (manual dir, TFDS dir)."""
  return casme2_small


@pytest.fixture(scope="module")
def paper_study(casme2_small, tmp_path_factory):
  tiny = casme2_small
  w = tmp_path_factory.mktemp("study")
  args = ["--workdir", str(w), "--models", E2E_MODEL, "--methods", "m1,m2",
          "--phases", "af,kfs", "--seeds", "0"] + study_args(tiny)
  assert study.main(args) == 0
  return w, args


def _pred(w):
  return _pred_of(w / "predictions_test.csv")


def _pred_of(path):
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return (np.array([EMOTIONS.index(r["label"]) for r in rows]),
          np.array([EMOTIONS.index(r["pred"]) for r in rows]))


@pytest.mark.slow
def test_report_has_every_table_and_figure(paper_study):
  w, _ = paper_study
  text = (w / "report.md").read_text()
  for heading in ("Table I", "Table III", "Table IV", "Table V", "paired bootstrap"):
    assert heading in text, heading
  for fig in ("fig2_preprocessing.png", "fig3_temporal.png", "fig4_confusion.png"):
    assert (w / fig).stat().st_size > 1000
  assert "| M1 | 384x384 | RGB |" in text and "| M2 | 224x224 | grayscale |" in text


@pytest.mark.slow
def test_report_numbers_match_the_runs(paper_study):
  w, _ = paper_study
  s = json.loads((w / "study.json").read_text())
  text = (w / "report.md").read_text()
  for method in ("m1", "m2"):
    for phase in ("af", "kfs"):
      run = json.loads((w / f"{E2E_MODEL}_{method}_{phase}" / "seed0" / "metrics.json")
                       .read_text())
      cell = s["cells"][f"{E2E_MODEL}_{method}_{phase}"]
      assert cell["macro_f1"] == pytest.approx(run["test"]["macro_f1"])
      assert f"{run['test']['macro_f1']:.4f}" in text
  # The paired M1-vs-M2 test equals metrics.paired_bootstrap on the saved predictions.
  for row in s["paired_m1_m2"]:
    y1, p1 = _pred(w / f"{E2E_MODEL}_m1_{row['phase']}" / "seed0")
    y2, p2 = _pred(w / f"{E2E_MODEL}_m2_{row['phase']}" / "seed0")
    assert np.array_equal(y1, y2)  # same test videos, same order
    ref = metrics.paired_bootstrap(y1, p1, p2, 7, n_resamples=10000, seed=0)
    assert row["diff"] == pytest.approx(ref["diff"]) and row["p_value"] == ref["p_value"]
    assert row["diff"] == pytest.approx(
        f1_score(y1, p1, labels=np.unique(y1), average="macro", zero_division=0)
        - f1_score(y1, p2, labels=np.unique(y1), average="macro", zero_division=0))


@pytest.mark.slow
def test_every_method_pair_on_the_same_test_videos(paper_study, m3_af_cell, tiny, tmp_path):
  """M2A and M3 beside the paper's M1 and M2 (the M1, M2 and M3 AF cells copied from
  paper_study and the session's M3 cell; M2A trains here): the method-pair table holds all
  six pairs, each equal to metrics.paired_bootstrap on the saved predictions; Table I gains
  rows for M2A and M3."""
  src, _ = paper_study
  w = tmp_path / "four"
  done = {m: src / f"{E2E_MODEL}_{m}_af" / "seed0" for m in ("m1", "m2")}
  done["m3"] = m3_af_cell
  for method, src_cell in done.items():
    cell = w / f"{E2E_MODEL}_{method}_af" / "seed0"
    cell.mkdir(parents=True)
    for f in ("metrics.json", "predictions_test.csv"):
      (cell / f).write_bytes((src_cell / f).read_bytes())
  args = ["--workdir", str(w), "--models", E2E_MODEL, "--methods", "m1,m2,m2a,m3",
          "--phases", "af", "--seeds", "0"] + study_args(tiny)
  assert study.main(args) == 0
  s = json.loads((w / "study.json").read_text())
  pairs = {(r["a"], r["b"]): r for r in s["paired_methods"]}
  assert sorted(pairs) == sorted([("m1", "m2"), ("m1", "m2a"), ("m1", "m3"), ("m2", "m2a"),
                                  ("m2", "m3"), ("m2a", "m3")])
  for (a, b), row in pairs.items():
    ya, pa = _pred(w / f"{E2E_MODEL}_{a}_af" / "seed0")
    yb, pb = _pred(w / f"{E2E_MODEL}_{b}_af" / "seed0")
    assert np.array_equal(ya, yb)  # same test videos, same order
    ref = metrics.paired_bootstrap(ya, pa, pb, 7, n_resamples=10000, seed=0)
    assert row["diff"] == pytest.approx(ref["diff"]) and row["p_value"] == ref["p_value"]
    assert row["ci"] == pytest.approx(ref["ci"])
  assert s["paired_m1_m2"][0]["diff"] == pairs[("m1", "m2")]["diff"]
  text = (w / "report.md").read_text()
  assert f"| {E2E_MODEL} | AF | 0 | M2A | M3 |" in text
  assert "| M2A | 224x224 | grayscale |" in text
  assert "| M3 | 224x224 | flow (u, v, magnitude) |" in text
  assert ("| phase | M1 best model | val macro-F1 | test macro-F1 | M2 best model" in text
          and "| M3 best model |" in text)
  assert (w / "fig2_preprocessing.png").stat().st_size > 1000


@pytest.mark.slow
def test_rerun_skips_finished_cells(paper_study, capsys):
  w, args = paper_study
  before = {p: p.stat().st_mtime_ns for p in w.glob("*/seed0/metrics.json")}
  assert study.main(args) == 0
  out = capsys.readouterr().out
  assert out.count("done, skipped") == 4
  assert before == {p: p.stat().st_mtime_ns for p in w.glob("*/seed0/metrics.json")}


@pytest.mark.slow
def test_loso_pools_predictions_over_folds(tiny, tmp_path):
  w = tmp_path / "loso"
  args = ["--workdir", str(w), "--models", E2E_MODEL, "--methods", "m2",
          "--phases", "af", "--protocol", "loso",
          "--set", "selection=test_fold_best_epoch"] + study_args(tiny)
  assert study.main(args) == 0
  folds = sorted((w / f"{E2E_MODEL}_m2_af" / "seed0").glob("fold*"))
  assert len(folds) == 4  # one per subject
  ys, ps = zip(*[_pred(f) for f in folds])
  y, p = np.concatenate(ys), np.concatenate(ps)
  labels = np.unique(y)
  uf1 = f1_score(y, p, labels=labels, average="macro", zero_division=0)
  uar = recall_score(y, p, labels=labels, average="macro", zero_division=0)
  cell = json.loads((w / "study.json").read_text())["cells"][f"{E2E_MODEL}_m2_af"]
  assert cell["macro_f1"] == pytest.approx(uf1) and cell["uar"] == pytest.approx(uar)
  text = (w / "report.md").read_text()
  assert "Leave-one-subject-out" in text and f"{uf1:.4f}" in text
  # Each fold tested exactly one subject, whose videos never appeared in its training split.
  for f in folds:
    rows = list(csv.DictReader(open(f / "predictions_test.csv")))
    assert len({r["video_id"].split("/")[0] for r in rows}) == 1
  # selection=test_fold_best_epoch: every epoch's test predictions recorded; the run's
  # result is still its validation-chosen epoch (that epoch's file is predictions_test.csv),
  # and the report's leaky section redoes the per-fold test choice (brute force here).
  from mer_jax.analysis import leak
  y_leak, p_leak = [], []
  for f in folds:
    m = json.loads((f / "metrics.json").read_text())
    # LOSO partitions the 20 videos: train is what validation and test leave.
    assert m["train_videos"] == 20 - m["validation"]["num_videos"] - m["test"]["num_videos"]
    epochs = sorted((f / "leaky_test_fold_best_epoch").glob("test_epoch*.csv"))
    assert len(epochs) == m["epochs_run"] == 2
    assert (f / "leaky_test_fold_best_epoch" / f"test_epoch{m['best_epoch']:04d}.csv"
            ).read_text() == (f / "predictions_test.csv").read_text()
    scored = [(np.mean(np.equal(*_pred_of(e))), k, e) for k, e in enumerate(epochs)]
    _, _, chosen = max(scored)          # ties: the later epoch
    y_leak.append(_pred_of(chosen)[0])
    p_leak.append(_pred_of(chosen)[1])
  (row,) = json.loads((w / "study.json").read_text())[leak.KEY]
  y_leak, p_leak = np.concatenate(y_leak), np.concatenate(p_leak)
  assert row["uf1"]["honest"] == pytest.approx(uf1) and row["uar"]["honest"] == pytest.approx(uar)
  assert row["uf1"]["leaky"] == pytest.approx(
      f1_score(y_leak, p_leak, labels=np.unique(y_leak), average="macro", zero_division=0))
  assert "## Leaky: the epoch chosen on each test fold" in text


def test_bad_arguments_are_reported(tmp_path, capsys):
  with pytest.raises(ValueError, match="poolformer_m36"):
    study.main(["--workdir", str(tmp_path), "--models", "resnet"])
  with pytest.raises(ValueError, match="valid: m1, m2, m2a, m3"):
    study.main(["--workdir", str(tmp_path), "--methods", "m4"])
  with pytest.raises(ValueError, match="valid: af, kfs, mfs"):
    study.main(["--workdir", str(tmp_path), "--phases", "apex"])
  with pytest.raises(FileNotFoundError):
    study.main(["--workdir", str(tmp_path / "empty"), "--report_only"])


# --- the report's statistics on hand-written runs (no training) -------------------

def _sk_f1(y, p):
  return f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0)


def _fake_run(root, model, method, phase, y, pred, ids, *, val, seed=0, fold=-1,
              protocol="paper", split_seed=0, split="video", shuffle=None):
  """A finished cell as train writes it: metrics.json (the cell's real config, a validation
  block, the test block) and predictions_test.csv (rows optionally reordered)."""
  cell = study.Cell(model, method, phase, seed, fold, split_seed, split)
  w = cell.workdir(root)
  w.mkdir(parents=True)
  config = study.cell_config(cell, [], protocol).to_dict()
  (w / "metrics.json").write_text(json.dumps({
      "config": config, "validation": {"macro_f1": val},
      "test": {"macro_f1": _sk_f1(y, pred)}}))
  rows = list(zip(ids, y, pred))
  if shuffle is not None:
    rows = [rows[i] for i in shuffle.permutation(len(rows))]
  with open(w / "predictions_test.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["video_id", "label", "pred"])
    out.writerows([(v, EMOTIONS[t], EMOTIONS[p]) for v, t, p in rows])
  return w


def _test_set(n=28, subjects=7):
  rng = np.random.default_rng(0)
  y = np.array([0] * 10 + [1] * 7 + [2] * 4 + [3] * 3 + [4] * 3 + [5] * 1)[:n]
  ids = np.array([f"sub{i % subjects + 1:02d}/EP{i:02d}_01" for i in range(n)])
  return ids, y, rng


def _noisy(y, rng, acc):
  """Predictions right on a fraction acc of the videos (the rest shifted by one class)."""
  p = y.copy()
  wrong = rng.permutation(len(y))[:int(round(len(y) * (1 - acc)))]
  p[wrong] = (y[wrong] + 1) % 7
  return p


MODELS3 = ("poolformer_s12", "poolformer_s24", "vit_b32")


@pytest.fixture(scope="module")
def chosen_study(tmp_path_factory):
  """3 models x M1, M2 x AF, KFS with validation and test rankings that disagree (and a
  validation tie in KFS M2), report written."""
  root = tmp_path_factory.mktemp("chosen")
  ids, y, rng = _test_set()
  # (method, phase) -> per model (validation macro-F1, test accuracy)
  spec = {("m1", "af"): {"poolformer_s12": (0.50, 0.60), "poolformer_s24": (0.70, 0.40),
                         "vit_b32": (0.30, 0.90)},
          ("m2", "af"): {"poolformer_s12": (0.65, 0.50), "poolformer_s24": (0.40, 0.80),
                         "vit_b32": (0.20, 0.95)},
          ("m1", "kfs"): {"poolformer_s12": (0.20, 0.85), "poolformer_s24": (0.35, 0.30),
                          "vit_b32": (0.60, 0.50)},
          ("m2", "kfs"): {"poolformer_s12": (0.55, 0.45), "poolformer_s24": (0.55, 0.90),
                          "vit_b32": (0.10, 0.70)}}
  for (method, phase), by_model in spec.items():
    for model, (val, acc) in by_model.items():
      _fake_run(root, model, method, phase, y, _noisy(y, rng, acc), ids, val=val,
                shuffle=rng)
  study.write_plan(root, study.plan(study.make_cells(MODELS3, ["m1", "m2"], ["af", "kfs"],
                                                      [0]), "paper", "video", None))
  assert study.main(["--workdir", str(root), "--report_only", "--bootstrap", "200"]) == 0
  return root


def _read_back(root):
  """Every run's (model, method, phase) -> (validation macro-F1, y, pred aligned by video
  id), read from the files alone."""
  out = {}
  for m in root.glob("*/seed0/metrics.json"):
    d = json.loads(m.read_text())
    c = d["config"]
    rows = sorted(csv.DictReader(open(m.parent / "predictions_test.csv")),
                  key=lambda r: r["video_id"])
    out[(c["model"]["name"], c["data"]["method"], c["data"]["phase"])] = (
        d["validation"]["macro_f1"], np.array([EMOTIONS.index(r["label"]) for r in rows]),
        np.array([EMOTIONS.index(r["pred"]) for r in rows]))
  return out


def test_best_model_is_chosen_on_validation(chosen_study):
  """The done line: for every (method, phase) the report's best model is the highest
  validation macro-F1 read from the runs' metrics.json (ties: name order), not the test
  best; its test macro-F1 sits beside it; the test-selected view is a separate table."""
  root = chosen_study
  runs = _read_back(root)
  s = json.loads((root / "study.json").read_text())
  text = (root / "report.md").read_text()
  assert "How the best model is chosen" in text and "validation" in s["selection"]
  differs = 0
  for method in ("m1", "m2"):
    for phase in ("af", "kfs"):
      cand = {m: v for (m, me, p), v in runs.items() if (me, p) == (method, phase)}
      top = max(v[0] for v in cand.values())
      by_val = sorted(m for m, v in cand.items() if v[0] == top)[0]
      by_test = max(cand, key=lambda m: _sk_f1(cand[m][1], cand[m][2]))
      differs += by_val != by_test
      got = s["best"][method][phase]
      assert got["model"] == by_val
      assert got["val_macro_f1"] == pytest.approx(top)
      assert got["test_macro_f1"] == pytest.approx(_sk_f1(*cand[by_val][1:]))
      assert s["test_selected"]["best"][method][phase] == by_test
  assert differs == 4
  assert s["best"]["m2"]["kfs"]["model"] == "poolformer_s12"  # the tie, by name
  headline = text.split("## Table III")[1].split("## Selected on the test set")[0]
  af = next(line for line in headline.splitlines() if line.startswith("| AF |"))
  assert af.startswith(f"| AF | {s['best']['m1']['af']['model']} | 0.7000 |")
  assert "## Selected on the test set, as the paper did — optimistic" in text


def test_m1_m2_is_paired_on_one_model_chosen_on_validation(chosen_study):
  root = chosen_study
  runs = _read_back(root)
  s = json.loads((root / "study.json").read_text())
  for phase in ("af", "kfs"):
    mean_val = {m: (runs[(m, "m1", phase)][0] + runs[(m, "m2", phase)][0]) / 2
                for m in MODELS3}
    model = min(mean_val, key=lambda m: (-mean_val[m], m))
    (_, y1, p1), (_, y2, p2) = runs[(model, "m1", phase)], runs[(model, "m2", phase)]
    assert np.array_equal(y1, y2)
    h = s["m1_m2"][phase]
    assert h["model"] == model
    assert h["diff"] == pytest.approx(_sk_f1(y1, p1) - _sk_f1(y1, p2))
    assert h["ci"][0] <= h["diff"] <= h["ci"][1]
    # The paper's way: best-by-test M1 minus best-by-test M2, two different models.
    t1 = max(_sk_f1(*runs[(m, "m1", phase)][1:]) for m in MODELS3)
    t2 = max(_sk_f1(*runs[(m, "m2", phase)][1:]) for m in MODELS3)
    assert s["test_selected"]["m1_m2"][phase] == pytest.approx(t1 - t2)


def test_paired_table_has_holm_and_no_zero_p(tmp_path):
  """Holm over the table's comparisons (statsmodels as reference), the count stated, and
  a difference at the resampling floor printed as '< 1/B', never 0."""
  from statsmodels.stats.multitest import multipletests
  ids, y, rng = _test_set()
  for phase, acc2 in (("af", 0.0), ("kfs", 0.8), ("mfs", 0.9)):
    _fake_run(tmp_path, "poolformer_s12", "m1", phase, y, y.copy(), ids, val=0.5)
    _fake_run(tmp_path, "poolformer_s12", "m2", phase, y, _noisy(y, rng, acc2), ids, val=0.5)
  study.write_plan(tmp_path, study.plan(study.make_cells(
      ["poolformer_s12"], ["m1", "m2"], ["af", "kfs", "mfs"], [0]), "paper", "video", None))
  assert study.main(["--workdir", str(tmp_path), "--report_only", "--bootstrap", "100"]) == 0
  s = json.loads((tmp_path / "study.json").read_text())
  rows = s["paired_methods"]
  assert len(rows) == 3
  ref = multipletests([r["p_value"] for r in rows], method="holm")[1]
  assert [r["p_holm"] for r in rows] == pytest.approx(list(ref))
  text = (tmp_path / "report.md").read_text()
  assert "adjusts for the 3 comparison(s)" in text
  floor = [r for r in rows if r["phase"] == "af"][0]
  assert floor["p_value"] > 0
  line = next(l for l in text.split("## Method pairs")[1].splitlines() if "| AF |" in l)
  cols = [c.strip() for c in line.strip("|").split("|")]
  assert cols[-2].startswith("< ") and cols[-2] == metrics.format_p(floor["p_value"], 10000)
  assert not any(c in ("0.000", "0.0000", "0") for l in text.splitlines() for c in
                 [x.strip() for x in l.strip("|").split("|")][-2:] if "| M1 | M2 |" in l)


def test_seed_mean_interval_and_per_class_average(tmp_path):
  """Three seeds of one cell: the interval is that of the seed mean (not one seed's), the
  figures and per-class F1 are averaged over seeds (sklearn per seed as reference)."""
  ids, y, rng = _test_set()
  preds = [_noisy(y, rng, acc) for acc in (0.5, 0.7, 0.9)]
  for seed, p in enumerate(preds):
    _fake_run(tmp_path, "poolformer_s12", "m2", "af", y, p, ids, val=0.4, seed=seed,
              shuffle=rng)
  assert study.main(["--workdir", str(tmp_path), "--report_only", "--bootstrap", "300"]) == 0
  cell = json.loads((tmp_path / "study.json").read_text())["cells"]["poolformer_s12_m2_af"]
  order = np.argsort(ids)
  f1s = [_sk_f1(y, p) for p in preds]
  assert cell["n_seeds"] == 3
  assert cell["macro_f1"] == pytest.approx(np.mean(f1s))
  assert cell["macro_f1_std"] == pytest.approx(np.std(f1s, ddof=1))
  want = metrics.seed_mean_ci(y[order], np.stack([p[order] for p in preds]), 7,
                              n_resamples=300)
  assert cell["ci"] == pytest.approx(list(want))
  assert cell["ci"] != pytest.approx(list(metrics.bootstrap_ci(y[order], preds[0][order], 7,
                                                                n_resamples=300)))
  per_class = np.array([f1_score(y, p, labels=range(7), average=None, zero_division=0)
                        for p in preds]).mean(0)
  present = np.isin(np.arange(7), y)
  got = np.array([np.nan if v is None else v for v in cell["per_class_f1"]], float)
  assert np.allclose(got[present], per_class[present]) and np.isnan(got[~present]).all()


def _loso_runs(root, folds, methods=("m1", "m2"), seed_order=1):
  """LOSO cells: one fold per subject of the test set; each method's CSV rows in another
  order (pairs must match by video id, not row order)."""
  ids, y, rng = _test_set(n=28, subjects=4)
  subj = np.array([v.split("/")[0] for v in ids])
  order = np.random.default_rng(seed_order)
  preds = {me: _noisy(y, rng, acc) for me, acc in zip(methods, (0.8, 0.5))}
  for k, s in enumerate(sorted(set(subj))[:folds]):
    i = subj == s
    for me in methods:
      _fake_run(root, "poolformer_s12", me, "af", y[i], preds[me][i], ids[i], val=0.5,
                fold=k, protocol="loso", shuffle=order)
  return ids, y, subj, preds


def test_loso_interval_clusters_subjects_and_pairs_by_video_id(tmp_path):
  ids, y, subj, preds = _loso_runs(tmp_path, folds=4)
  cells = study.make_cells(["poolformer_s12"], ["m1", "m2"], ["af"], [0], range(4))
  study.write_plan(tmp_path, study.plan(cells, "loso", "video", 4))
  assert study.main(["--workdir", str(tmp_path), "--report_only", "--bootstrap", "300"]) == 0
  s = json.loads((tmp_path / "study.json").read_text())
  cell = s["cells"]["poolformer_s12_m1_af"]
  o = np.argsort(ids)
  assert cell["macro_f1"] == pytest.approx(_sk_f1(y, preds["m1"]))
  want = metrics.bootstrap_ci(y[o], preds["m1"][o], 7, n_resamples=300, clusters=subj[o])
  assert cell["ci"] == pytest.approx(list(want))
  assert cell["ci"] != pytest.approx(list(metrics.bootstrap_ci(y[o], preds["m1"][o], 7,
                                                                n_resamples=300)))
  assert cell["folds"] == 4 and cell["complete"] and s["complete"]
  (row,) = s["paired_methods"]
  assert row["diff"] == pytest.approx(_sk_f1(y, preds["m1"]) - _sk_f1(y, preds["m2"]))
  ref = metrics.paired_bootstrap(y[o], preds["m1"][o], preds["m2"][o], 7, n_resamples=10000,
                                 seed=0, clusters=subj[o])
  assert row["p_value"] == ref["p_value"] and row["ci"] == pytest.approx(list(ref["ci"]))
  assert "| 4 of 4 |" in (tmp_path / "report.md").read_text()


def test_loso_with_missing_folds_is_not_called_complete(tmp_path):
  _loso_runs(tmp_path, folds=3)
  cells = study.make_cells(["poolformer_s12"], ["m1", "m2"], ["af"], [0], range(4))
  study.write_plan(tmp_path, study.plan(cells, "loso", "video", 4))
  assert study.main(["--workdir", str(tmp_path), "--report_only", "--bootstrap", "50"]) == 0
  s = json.loads((tmp_path / "study.json").read_text())
  assert not s["complete"] and not s["cells"]["poolformer_s12_m1_af"]["complete"]
  assert len(s["missing_cells"]) == 2  # fold 3 of M1 and of M2
  text = (tmp_path / "report.md").read_text()
  assert text.split("\n")[2].startswith("**Incomplete study: 2 of 8 planned cells")
  assert "| 3 of 4 |" in text and "INCOMPLETE: not a LOSO result" in text
  assert "0.0000 [" not in text or "(incomplete)" in text


def test_array_task_writes_no_report(tmp_path, capsys):
  """With --num_tasks 2 no task writes report.md, even the last one (its cells done)."""
  ids, y, rng = _test_set()
  for me in ("m1", "m2"):
    _fake_run(tmp_path, "poolformer_s12", me, "af", y, y, ids, val=0.5)
  args = ["--workdir", str(tmp_path), "--models", "poolformer_s12", "--phases", "af"]
  for task in ("0", "1"):
    assert study.main(args + ["--num_tasks", "2", "--task_index", task]) == 0
    assert not (tmp_path / "report.md").exists()
  assert "--report_only once every task has finished" in capsys.readouterr().out
  assert json.loads((tmp_path / "study_plan.json").read_text())["cells"] == [
      ["poolformer_s12", "m1", "af", 0, -1, 0], ["poolformer_s12", "m2", "af", 0, -1, 0]]


def test_split_seeds_layout_and_summary(tmp_path):
  """Split seeds 0 and 1 (different test videos): split 0 keeps the paper layout, split 1
  its own folder; the cell gives mean ± sd over splits and the pooled macro-F1."""
  cells = study.make_cells(["poolformer_s12"], ["m1"], ["af"], [0], split_seeds=[0, 1])
  assert [c.workdir(tmp_path).relative_to(tmp_path).as_posix() for c in cells] == [
      "poolformer_s12_m1_af/seed0", "poolformer_s12_m1_af/split1/seed0"]
  assert study.Cell("poolformer_s12", "m1", "af", 0, split="subject").workdir(
      tmp_path).relative_to(tmp_path).as_posix() == "poolformer_s12_m1_af/subject0/seed0"
  assert study.cell_config(cells[1], [], "paper").data.split_seed == 1
  ids, y, rng = _test_set()
  ids1 = np.array([v.replace("_01", "_02") for v in ids])
  p0, p1 = _noisy(y, rng, 0.5), _noisy(y, rng, 0.9)
  _fake_run(tmp_path, "poolformer_s12", "m1", "af", y, p0, ids, val=0.5)
  _fake_run(tmp_path, "poolformer_s12", "m1", "af", y, p1, ids1, val=0.6, split_seed=1)
  assert study.main(["--workdir", str(tmp_path), "--report_only", "--bootstrap", "100"]) == 0
  cell = json.loads((tmp_path / "study.json").read_text())["cells"]["poolformer_s12_m1_af"]
  f0, f1 = _sk_f1(y, p0), _sk_f1(y, p1)
  assert cell["split_seeds"] == [0, 1] and cell["spread"] == "split seeds"
  assert cell["macro_f1"] == pytest.approx((f0 + f1) / 2)
  assert cell["macro_f1_std"] == pytest.approx(np.std([f0, f1], ddof=1))
  assert cell["pooled_macro_f1"] == pytest.approx(_sk_f1(np.r_[y, y], np.r_[p0, p1]))
  assert cell["val_macro_f1"] == pytest.approx(0.55)
  assert "## Split variance" in (tmp_path / "report.md").read_text()


def test_a_contradicting_override_stops_the_study_before_its_first_cell(tmp_path):
  """--set aug.rotate_deg=10 suits M1 but not M3: the M1 cell is not trained first."""
  from mer_jax.plumbing import errors
  cells = study.make_cells(["poolformer_s12"], ["m1", "m3"], ["af"], [0])
  with pytest.raises(errors.UsageError, match="aug.rotate_deg=10.0 with data.method=m3"):
    study.run_cells(cells, tmp_path, ["aug.rotate_deg=10.0"], "paper", log=lambda *a: None)
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("cell, protocol", [
    (study.Cell("swin_b", "m2", "af", 3), "paper"),
    (study.Cell("poolformer_m36", "m3", "mfs", 1, split_seed=2, split="subject"), "paper"),
    (study.Cell("poolformer_s12", "m1", "kfs", 0, fold=5), "loso")])
def test_a_cells_logged_command_rebuilds_its_config_through_configs_paper_py(
    cell, protocol, tmp_path):
  """The command the study logs for a cell, read back as train reads it, is the cell's config."""
  import shlex
  from e2e import ROOT
  from mer_jax.plumbing import cli
  overrides = ["num_epochs=3", "data.manual_dir=/data/my casme2"]
  argv = shlex.split(study.cell_command(cell, overrides, protocol, tmp_path))
  assert argv[:4] == ["python", "-m", "mer_jax.train", "--config"]
  assert argv[4] == f"configs/paper.py:model={cell.model},method={cell.method},phase={cell.phase}"
  assert argv[-2:] == ["--workdir", str(cell.workdir(tmp_path))]
  flags = argv[5:-2]
  assert all(f.startswith("--config.") for f in flags)
  config = cli.load_config(str(ROOT / argv[4]), [f.removeprefix("--config.") for f in flags])
  assert config.to_dict() == study.cell_config(cell, overrides, protocol).to_dict()
  assert config.seed == cell.seed and config.data.fold == cell.fold
  assert config.data.manual_dir == "/data/my casme2" and config.num_epochs == 3


def test_finisher_finishes_one_run_at_a_time_and_raises_its_error():
  """The study's background finisher (loop.Finisher): a run handed over waits for the one
  before it to finish, and a finish that failed raises at the next hand-over or at close."""
  import threading
  from mer_jax.run import loop
  first_may_end, log = threading.Event(), []

  def first():
    first_may_end.wait(5)
    log.append("first")

  def failing():
    raise OSError("disk full")

  f = loop.Finisher()
  f.submit(first)
  threading.Timer(0.2, first_may_end.set).start()
  f.submit(failing)            # returns only once `first` has finished
  assert log == ["first"]
  with pytest.raises(OSError, match="disk full"):
    f.submit(lambda: log.append("third"))
  f.submit(lambda: log.append("fourth"))
  f.close()
  assert log == ["first", "fourth"]
