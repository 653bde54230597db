"""mer_jax.run.report: a split's frame probabilities -> video rows and the run's files."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from mer_jax import metrics
from mer_jax.run import report
from mer_jax.data.labels import EMOTIONS


def _split():
  """Frames of 6 videos of 3 subjects; 'sadness' has a single video."""
  videos = [("sub02/EP01_01", "sub02", "others", ["others"] * 3),
            ("sub01/EP02_01f", "sub01", "others", ["others", "others", "disgust"]),
            ("sub01/EP03_02", "sub01", "disgust", ["disgust"] * 2),
            ("sub03/EP07_01", "sub03", "sadness", ["others"] * 2),
            ("sub03/EP01_05", "sub03", "others", ["others"]),
            ("sub02/EP09_03", "sub02", "disgust", ["others", "disgust", "disgust"])]
  probs, labels, ids, subjects = [], [], [], []
  for vid, subj, label, frame_preds in videos:
    for fp in frame_preds:
      probs.append(np.eye(len(EMOTIONS))[EMOTIONS.index(fp)] * 0.9 + 0.1 / len(EMOTIONS))
      labels.append(EMOTIONS.index(label))
      ids.append(vid)
      subjects.append(subj)
  return np.array(probs), np.array(labels), np.array(ids), np.array(subjects), videos


def test_summarise_rows_carry_the_subject_and_the_ci_is_stratified(tmp_path):
  probs, labels, ids, subjects, videos = _split()
  r = report.summarise(probs, labels, ids, subjects, n_resamples=300, seed=2)
  # by hand: each video's majority frame prediction, rows sorted by video id
  want = sorted((vid, subj, label, max(set(fp), key=fp.count)) for vid, subj, label, fp in videos)
  got = [(p["video_id"], p["subject"], p["label"], p["pred"]) for p in r["predictions"]]
  assert got == want
  y = np.array([EMOTIONS.index(w[2]) for w in want])
  p = np.array([EMOTIONS.index(w[3]) for w in want])
  ci = metrics.bootstrap_ci(y, p, len(EMOTIONS), n_resamples=300, seed=2, stratify=True)
  assert r["video"]["macro_f1_ci"] == pytest.approx(list(ci))
  assert ci != metrics.bootstrap_ci(y, p, len(EMOTIONS), n_resamples=300, seed=2,
                                    stratify=False)
  report.write_report(tmp_path, {"test": r}, best_epoch=1, config={})
  with open(tmp_path / "predictions_test.csv") as f:
    reader = csv.DictReader(f)
    assert reader.fieldnames == ["video_id", "subject", "dataset", "label", "pred"]
    rows = list(reader)
  assert [(row["video_id"], row["subject"], row["label"], row["pred"]) for row in rows] == want
  assert {row["dataset"] for row in rows} == {"casme2"}   # examples that name no dataset
  # A composite's examples carry their source dataset; each video row takes its frames'.
  source = np.array(["samm" if s == subjects[0] else "casme2" for s in subjects])
  named = report.summarise(probs, labels, ids, subjects, n_resamples=10, datasets=source)
  assert [(p["video_id"], p["dataset"]) for p in named["predictions"]] == [
      (w[0], "samm" if w[1] == subjects[0] else "casme2") for w in want]


def _one_frame_videos(pairs):
  """One frame a video, (label, prediction) each: summarise's inputs."""
  e = np.eye(len(EMOTIONS))
  probs = np.array([e[EMOTIONS.index(p)] * 0.9 + 0.1 / len(EMOTIONS) for _, p in pairs])
  labels = np.array([EMOTIONS.index(t) for t, _ in pairs])
  ids = np.array([f"sub{i:02d}/EP{i:02d}" for i in range(len(pairs))])
  return probs, labels, ids, ids


def test_a_split_whose_resamples_cannot_differ_has_its_zero_width_interval_explained(tmp_path):
  """One video per class (a LOSO fold's subject, often): resampled within classes, every
  resample is the split itself (by hand), so the interval is the point; the report says
  what that means instead of showing it as certainty. A split with spread says nothing."""
  point = report.summarise(*_one_frame_videos(
      [("others", "others"), ("disgust", "others"), ("sadness", "sadness")]), n_resamples=200)
  assert point["video"]["macro_f1_ci"] == [point["video"]["macro_f1"]] * 2
  wide = report.summarise(*_one_frame_videos(
      [("others", "others"), ("others", "disgust"), ("others", "others"),
       ("disgust", "disgust"), ("disgust", "others"), ("sadness", "sadness")]), n_resamples=200)
  assert wide["video"]["macro_f1_ci"][0] < wide["video"]["macro_f1_ci"][1]
  report.write_report(tmp_path, {"validation": wide, "test": point}, best_epoch=1, config={})
  text = (tmp_path / "report.md").read_text()
  assert "**test**: its interval has zero width (3 videos, at most 1 of a class)" in text
  assert "**validation**" not in text
