"""The MEGC 2019 composite and cross-dataset runs on the synthetic stand-ins: builds per
dataset, labels through megc.three_class, LOSO over dataset-prefixed subjects, cross splits,
and the composite LOSO study with both epoch selections end to end.

One module-scoped fixture builds the three stand-ins once (m2_mfs, small trees); the
references are the readers' Video records and megc.three_class, not the pipeline, and, for
the study, scikit-learn on the runs' own prediction CSVs.
"""
from __future__ import annotations

import json
import re

import ml_collections
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from mer_jax import study
from mer_jax.analysis import leak, size
from mer_jax.data import load_videos, megc
from mer_jax.run import experiment, input_pipeline, report, sources
from tiny import E2E_MODEL

# The tests on the stand-ins' builds are slow (three small builds, ~20-30 s on two busy
# cores; the study trains two folds); the refusals and the size table need no build.
slow = pytest.mark.slow


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


@slow
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


@slow
def test_composite_loso_one_fold_per_subject(composite):
  config, dirs, videos = composite
  subjects = sorted({v.subject_id for vs in videos.values() for v in vs
                     if megc.three_class(v) is not None})
  scheme = sources.scheme(config.data)
  assert input_pipeline.loso_subjects(dirs, scheme) == subjects
  fold = input_pipeline.load_splits(dirs, "loso", len(subjects) - 1, scheme=scheme)
  assert set(fold["test"].subjects) == {subjects[-1]}
  assert not set(fold["train"].subjects) & set(fold["validation"].subjects)


@slow
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


@pytest.fixture(scope="module")
def leaky_composite(composite, tmp_path_factory):
  """The composite LOSO study of README's leak section, test-sized, on the fixture's builds:
  two folds (a SAMM and a CASME II subject), 2 epochs, 32 px, a quarter of the training
  videos, every epoch's test predictions recorded (selection=test_fold_best_epoch)."""
  config, dirs, _ = composite
  n = len(input_pipeline.loso_subjects(dirs, sources.scheme(config.data)))
  root = tmp_path_factory.mktemp("megc_leak")
  sets = [f"data.{k}={config.data[k]}" for k in ("manual_dir", "data_dir", "synthetic",
                                                  "synthetic_videos", "synthetic_subjects")]
  sets += ["init.weights=", "model.img_size=32", "num_epochs=2", "patience=5",
           "data.train_fraction=0.25", "eval_batch_size=32", "bootstrap_resamples=20",
           "selection=test_fold_best_epoch"]
  assert study.main(["--workdir", str(root), "--dataset", "megc2019", "--protocol", "loso",
                     "--folds", f"0,{n - 1}", "--models", E2E_MODEL, "--methods", "m2",
                     "--phases", "mfs", "--bootstrap", "50"]
                    + [a for s in sets for a in ("--set", s)]) == 0
  return root


def _scores(df: pd.DataFrame) -> dict:
  """UF1 and UAR (sklearn macro over the classes present in the labels)."""
  labels = sorted(set(df["label"]))
  return {name: fn(df["label"], df["pred"], labels=labels, average="macro", zero_division=0)
          for name, fn in (("uf1", f1_score), ("uar", recall_score))}


@slow
def test_composite_leak_study_equals_sklearn_on_the_runs_csvs(leaky_composite):
  """study.json's honest (validation-chosen) and leaky (test-fold-chosen) UF1/UAR, pooled
  and per source dataset, equal sklearn on the runs' predictions_test.csv and per-epoch test
  CSVs, the leaky epoch being redone here (highest test accuracy, ties to the later one)."""
  root = leaky_composite
  out = json.loads((root / "study.json").read_text())
  cell = out["cells"][f"{E2E_MODEL}_m2_mfs"]
  (row,) = out[leak.KEY]
  honest, leaky, chosen = [], [], {}
  folds = sorted(root.glob(f"{E2E_MODEL}_m2_mfs/seed0/fold*"))
  assert len(folds) == 2
  for w in folds:
    m = json.loads((w / "metrics.json").read_text())
    h = pd.read_csv(w / "predictions_test.csv")
    epochs = {int(f.stem[-4:]): pd.read_csv(f)
              for f in (w / report.EPOCH_PREDICTIONS).glob("*.csv")}
    assert sorted(epochs) == [1, 2]
    acc = {e: accuracy_score(p["label"], p["pred"]) for e, p in epochs.items()}
    e = max(e for e in acc if acc[e] == max(acc.values()))
    # The honest predictions are those of the validation-chosen epoch.
    assert list(epochs[m["best_epoch"]]["pred"]) == list(h["pred"])
    chosen[int(m["config"]["data"]["fold"])] = e
    honest.append(h)
    leaky.append(epochs[e].set_index("video_id").loc[h["video_id"]].reset_index())
  assert {x["fold"]: x["leaky"] for x in row["epochs"]} == chosen
  honest, leaky = pd.concat(honest), pd.concat(leaky)
  assert set(honest["dataset"]) == {"samm", "casme2"}
  for name in ("uf1", "uar"):
    h, lk = _scores(honest)[name], _scores(leaky)[name]
    assert row[name]["honest"] == pytest.approx(h) and row[name]["leaky"] == pytest.approx(lk)
    assert row[name]["inflation"] == pytest.approx(lk - h)
    assert cell["macro_f1" if name == "uf1" else "uar"] == pytest.approx(h)
    for d in ("samm", "casme2"):
      hd, ld = (_scores(x[x["dataset"] == d])[name] for x in (honest, leaky))
      got = row["per_dataset"][d][name]
      assert got["honest"] == pytest.approx(hd) and got["leaky"] == pytest.approx(ld)
      assert got["inflation"] == pytest.approx(ld - hd)
      assert cell["per_dataset"][d][name] == pytest.approx(hd)
  text = (root / "report.md").read_text()
  assert "Per source dataset (the MEGC convention; the same runs and chosen epochs" in text
  assert f"| samm | 1 | {int((honest['dataset'] == 'samm').sum())} | " in text


def test_size_report_one_table_per_dataset(tmp_path):
  """study --datasets casme2,megc2019 --train_fractions 0.5,1, read back (--report_only) from
  hand-written runs (no training): size.json's M1 − M2 per dataset and fraction equals
  sklearn's macro-F1 difference on each run's saved predictions, its x the runs' own
  train_videos, and size_report.md has one table per dataset holding that dataset's rows."""
  rng = np.random.default_rng(3)
  want = {}
  for name, n_train in (("casme2", 60), ("megc2019", 120)):
    ids = np.array([f"s{i % 4}/v{i:02d}" for i in range(18)])
    for fraction in (0.5, 1.0):
      data = ml_collections.ConfigDict(dict(dataset=name, labels="", protocol="paper"))
      classes = sources.classes(data)
      y = rng.integers(0, len(classes), len(ids))
      f1 = {}
      for method, acc in (("m1", 0.8), ("m2", 0.4)):
        p = np.where(rng.random(len(ids)) < acc, y, rng.integers(0, len(classes), len(ids)))
        cell = study.Cell("poolformer_s12", method, "kfs", 0)
        w = cell.workdir(size.fraction_dir(tmp_path / name, fraction))
        w.mkdir(parents=True)
        config = study.cell_config(cell, [f"data.dataset={name}",
                                          f"data.train_fraction={fraction:g}"], "paper")
        (w / "metrics.json").write_text(json.dumps({
            "config": config.to_dict(), "classes": list(classes),
            "validation": {"macro_f1": 0.5}, "test": {"macro_f1": 0.0},
            "train_videos": int(n_train * fraction)}))
        pd.DataFrame({"video_id": ids, "subject": [i.split("/")[0] for i in ids],
                      "dataset": name, "label": [classes[t] for t in y],
                      "pred": [classes[q] for q in p]}).to_csv(w / "predictions_test.csv",
                                                                index=False)
        f1[method] = f1_score(y, p, labels=np.unique(y), average="macro", zero_division=0)
      want[(name, fraction)] = (f1["m1"] - f1["m2"], n_train * fraction)
  assert study.main(["--workdir", str(tmp_path), "--datasets", "casme2,megc2019",
                     "--report_only", "--bootstrap", "20"]) == 0
  rows = json.loads((tmp_path / "size.json").read_text())["differences"]
  got = {(r["data"], r["fraction"]): (r["diff"], r["train_videos"]) for r in rows}
  assert got.keys() == want.keys()
  for k, (diff, n) in want.items():
    assert got[k] == (pytest.approx(diff), int(n))
  text = (tmp_path / "size_report.md").read_text()
  tables = dict(re.findall(r"^## (\S+)\n\n((?:\|.*\n)+)", text, re.M))
  assert sorted(tables) == ["casme2", "megc2019"]
  for (name, fraction), (diff, n) in want.items():
    assert f"| {fraction:g} | {n:.1f} | poolformer_s12 | KFS | M1 − M2 | " in tables[name]
    assert f"{diff:.4f}" in tables[name]
  assert (tmp_path / "fig_size.png").stat().st_size > 1000


def test_report_names_the_protocol_and_the_data_it_ran_on():
  """The report's protocol line: a cross study is not called the holdout split, and a
  study on another dataset than CASME II names it."""
  from mer_jax.analysis import tables
  run = lambda name, split="video": {"data_name": name, "split": split}  # noqa: E731
  cross = tables.protocol_text([run("casme2→samm")], loso=False)
  assert cross.startswith("cross-dataset casme2→samm") and "201/26/28" not in cross
  assert tables.protocol_text([run("casme2")], loso=False).endswith(
      "by video (the paper split when split seed 0)")
  assert tables.protocol_text([run("samm", "subject")], loso=False).endswith(
      "by subject on samm")
  assert tables.protocol_text([run("megc2019")], loso=True).endswith("UF1/UAR) on megc2019")
