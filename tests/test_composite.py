"""The MEGC 2019 composite and cross-dataset runs on the synthetic stand-ins: builds per
dataset, labels through megc.three_class, LOSO over dataset-prefixed subjects, cross splits.

One module-scoped fixture builds the three stand-ins once (m2_mfs, small trees); the
references are the readers' Video records and megc.three_class, not the pipeline.
"""
from __future__ import annotations

import ml_collections

import pytest

from mer_jax.data import load_videos, megc
from mer_jax.run import experiment, input_pipeline, sources

pytestmark = pytest.mark.slow  # three small builds, ~20-30 s on two busy cores


@pytest.fixture(scope="module")
def composite(tmp_path_factory):
  root = tmp_path_factory.mktemp("composite")
  data = ml_collections.ConfigDict(dict(
      dataset="megc2019", labels="", protocol="paper", train_datasets="", test_dataset="",
      method="m2", phase="mfs", manual_dir=str(root / "src"), data_dir=str(root / "tfds"),
      synthetic=True, synthetic_videos=20, synthetic_subjects=4, synthetic_intensity=1.0))
  config = ml_collections.ConfigDict({"data": data})
  dirs = experiment.dataset_dirs(config, log=lambda *a: None)
  videos = {n: load_videos(n, root / "src" / n) for n in megc.DATASETS}
  return config, dirs, videos


def kept(videos):
  return {v.video_id: megc.three_class(v) for vs in videos.values() for v in vs
          if megc.three_class(v) is not None}


def test_composite_examples_carry_source_and_three_classes(composite):
  config, dirs, videos = composite
  assert set(dirs) == set(megc.DATASETS)
  data = input_pipeline.load_splits(dirs, scheme=sources.scheme(config.data))
  want = kept(videos)
  source = {v.video_id: v.dataset for vs in videos.values() for v in vs}
  got = {}
  for part in data.values():
    for vid, d, y in zip(part.video_ids, part.datasets, part.labels):
      assert d == source[vid]
      got.setdefault(vid, set()).add(megc.labels.THREE[y])
  assert {k: v.pop() for k, v in got.items()} == want  # the dropped videos left out


def test_composite_loso_one_fold_per_subject(composite):
  config, dirs, videos = composite
  subjects = sorted({v.subject_id for vs in videos.values() for v in vs
                     if megc.three_class(v) is not None})
  scheme = sources.scheme(config.data)
  assert input_pipeline.loso_subjects(dirs, scheme) == subjects
  fold = input_pipeline.load_splits(dirs, "loso", len(subjects) - 1, scheme=scheme)
  assert set(fold["test"].subjects) == {subjects[-1]}
  assert not set(fold["train"].subjects) & set(fold["validation"].subjects)


def test_cross_trains_on_one_dataset_and_tests_on_another(composite):
  config, dirs, videos = composite
  data = ml_collections.ConfigDict(dict(config.data, protocol="cross",
                                        train_datasets="megc2019", test_dataset="samm"))
  train, test = sources.train_test(data)
  assert (train, test) == (("casme2", "smic_hs"), ("samm",))  # the composite minus one
  out = input_pipeline.load_splits(dirs, "cross", scheme=sources.scheme(data),
                                   test_datasets=test)
  assert set(out["test"].video_ids) == {i for i in kept(videos) if i.startswith("samm/")}
  for split in ("train", "validation"):
    assert set(out[split].datasets) <= {"casme2", "smic_hs"} and len(out[split])
  assert not set(out["train"].subjects) & set(out["validation"].subjects)


def test_manual_dirs_and_refusals(tmp_path):
  assert sources.manual_dirs(str(tmp_path), ("casme2", "samm")) == {
      "casme2": str(tmp_path / "casme2"), "samm": str(tmp_path / "samm")}
  assert sources.manual_dirs("casme2=/a,samm=/b", ("samm",)) == {"samm": "/b"}
  with pytest.raises(sources.UsageError, match="smic_hs=DIR"):
    sources.manual_dirs("casme2=/a", ("casme2", "smic_hs"))
  with pytest.raises(sources.UsageError, match="no classes for samm"):
    sources.scheme({"dataset": "samm", "labels": "casme2"})
