"""A small study on a tiny synthetic CASME II: cells run, resume, and the report's
numbers equal the per-run metrics.json files and independent references."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score

from mer_jax import metrics, study
from mer_jax.data.casme2 import EMOTIONS
from e2e import study_args


@pytest.fixture
def tiny(casme2_small):
  """The session's small synthetic CASME II (manual dir, TFDS dir)."""
  return casme2_small


@pytest.fixture(scope="module")
def paper_study(casme2_small, tmp_path_factory):
  tiny = casme2_small
  w = tmp_path_factory.mktemp("study")
  args = ["--workdir", str(w), "--models", "poolformer_s12", "--methods", "m1,m2",
          "--phases", "af,kfs", "--seeds", "0"] + study_args(tiny)
  assert study.main(args) == 0
  return w, args


def _pred(w):
  with open(w / "predictions_test.csv") as f:
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
      run = json.loads((w / f"poolformer_s12_{method}_{phase}" / "seed0" / "metrics.json")
                       .read_text())
      cell = s["cells"][f"poolformer_s12_{method}_{phase}"]
      assert cell["macro_f1"] == pytest.approx(run["test"]["macro_f1"])
      assert f"{run['test']['macro_f1']:.4f}" in text
  # The paired M1-vs-M2 test equals metrics.paired_bootstrap on the saved predictions.
  for row in s["paired_m1_m2"]:
    y1, p1 = _pred(w / f"poolformer_s12_m1_{row['phase']}" / "seed0")
    y2, p2 = _pred(w / f"poolformer_s12_m2_{row['phase']}" / "seed0")
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
  done = {m: src / f"poolformer_s12_{m}_af" / "seed0" for m in ("m1", "m2")}
  done["m3"] = m3_af_cell
  for method, src_cell in done.items():
    cell = w / f"poolformer_s12_{method}_af" / "seed0"
    cell.mkdir(parents=True)
    for f in ("metrics.json", "predictions_test.csv"):
      (cell / f).write_bytes((src_cell / f).read_bytes())
  args = ["--workdir", str(w), "--models", "poolformer_s12", "--methods", "m1,m2,m2a,m3",
          "--phases", "af", "--seeds", "0"] + study_args(tiny)
  assert study.main(args) == 0
  s = json.loads((w / "study.json").read_text())
  pairs = {(r["a"], r["b"]): r for r in s["paired_methods"]}
  assert sorted(pairs) == sorted([("m1", "m2"), ("m1", "m2a"), ("m1", "m3"), ("m2", "m2a"),
                                  ("m2", "m3"), ("m2a", "m3")])
  for (a, b), row in pairs.items():
    ya, pa = _pred(w / f"poolformer_s12_{a}_af" / "seed0")
    yb, pb = _pred(w / f"poolformer_s12_{b}_af" / "seed0")
    assert np.array_equal(ya, yb)  # same test videos, same order
    ref = metrics.paired_bootstrap(ya, pa, pb, 7, n_resamples=10000, seed=0)
    assert row["diff"] == pytest.approx(ref["diff"]) and row["p_value"] == ref["p_value"]
    assert row["ci"] == pytest.approx(ref["ci"])
  assert s["paired_m1_m2"][0]["diff"] == pairs[("m1", "m2")]["diff"]
  text = (w / "report.md").read_text()
  assert "| poolformer_s12 | AF | 0 | M2A | M3 |" in text
  assert "| M2A | 224x224 | grayscale |" in text
  assert "| M3 | 224x224 | flow (u, v, magnitude) |" in text
  assert "| phase | M1 best model | M1 macro-F1 | M2 best model" in text and "M3 macro-F1" in text
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
  args = ["--workdir", str(w), "--models", "poolformer_s12", "--methods", "m2",
          "--phases", "af", "--protocol", "loso"] + study_args(tiny)
  assert study.main(args) == 0
  folds = sorted((w / "poolformer_s12_m2_af" / "seed0").glob("fold*"))
  assert len(folds) == 4  # one per subject
  ys, ps = zip(*[_pred(f) for f in folds])
  y, p = np.concatenate(ys), np.concatenate(ps)
  labels = np.unique(y)
  uf1 = f1_score(y, p, labels=labels, average="macro", zero_division=0)
  uar = recall_score(y, p, labels=labels, average="macro", zero_division=0)
  cell = json.loads((w / "study.json").read_text())["cells"]["poolformer_s12_m2_af"]
  assert cell["macro_f1"] == pytest.approx(uf1) and cell["uar"] == pytest.approx(uar)
  text = (w / "report.md").read_text()
  assert "Leave-one-subject-out" in text and f"{uf1:.4f}" in text
  # Each fold tested exactly one subject, whose videos never appeared in its training split.
  for f in folds:
    rows = list(csv.DictReader(open(f / "predictions_test.csv")))
    assert len({r["video_id"].split("/")[0] for r in rows}) == 1


def test_bad_arguments_are_reported(tmp_path, capsys):
  with pytest.raises(ValueError, match="poolformer_m36"):
    study.main(["--workdir", str(tmp_path), "--models", "resnet"])
  with pytest.raises(ValueError, match="valid: m1, m2, m2a, m3"):
    study.main(["--workdir", str(tmp_path), "--methods", "m4"])
  with pytest.raises(ValueError, match="valid: af, kfs, mfs"):
    study.main(["--workdir", str(tmp_path), "--phases", "apex"])
  with pytest.raises(FileNotFoundError):
    study.main(["--workdir", str(tmp_path / "empty"), "--report-only"])


def test_a_contradicting_override_stops_the_study_before_its_first_cell(tmp_path):
  """--set aug.rotate_deg=10 suits M1 but not M3: the M1 cell is not trained first."""
  from mer_jax import cli
  cells = study.make_cells(["poolformer_s12"], ["m1", "m3"], ["af"], [0])
  with pytest.raises(cli.UsageError, match="aug.rotate_deg=10.0 with data.method=m3"):
    study.run_cells(cells, tmp_path, ["aug.rotate_deg=10.0"], "paper", log=lambda *a: None)
  assert not any(tmp_path.iterdir())
