"""The CASME II TFDS builder on a small synthetic CASME II.

Checks what a built dataset holds against the modules it is made from, read
independently: the sheet (load_casme2), the phase rules (select_frames), the
paper split (paper_split) and the preprocessing of single frames.
"""
from __future__ import annotations

import collections
import errno
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mer_jax.plumbing import cli
from mer_jax.data import build, casme2, fingerprint, phases, pixels, runner, splits, tfds_builder
from mer_jax.data.phases import Phase

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manual(synthetic_casme2):
  """conftest's synthetic CASME II (16 videos, 4 subjects); read-only."""
  return synthetic_casme2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("detections"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def read_all(dataset_dir):
  src = tfds.builder_from_directory(str(dataset_dir)).as_data_source()
  return {k: [src[k][i] for i in range(len(src[k]))] for k in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def m2_mfs(manual, data_dir, cache):
  d = build.ensure_built("m2_mfs", str(manual), data_dir, detection_cache=cache, workers=1,
                         log=lambda *a: None)
  return d, read_all(d)


def test_m2_mfs_holds_each_videos_mfs_frames_in_its_paper_split(manual, m2_mfs):
  _, data = m2_mfs
  index = casme2.load_casme2(manual)
  by_id = {v.video_id: v for v in index.videos}
  split = splits.paper_split(index.videos)
  seen = collections.defaultdict(list)
  for name, examples in data.items():
    for ex in examples:
      vid = ex["video_id"].decode()
      assert vid in split[name], f"{vid} in {name}"
      v = by_id[vid]
      assert ex["label"] == v.label and ex["subject"].decode() == v.subject
      assert (ex["onset"], ex["apex"], ex["offset"]) == (v.onset, v.apex, v.offset)
      assert ex["image"].shape == (224, 224, 1) and ex["image"].dtype == np.uint8
      seen[vid].append((int(ex["frame_index"]), ex["role"].decode()))
  assert sorted(seen) == sorted(by_id)
  for vid, got in seen.items():
    want = [(f.frame_index, f.role) for f in phases.select_frames(by_id[vid], Phase.MFS)]
    assert sorted(got) == want


def test_quality_json_has_table_one_figures(m2_mfs):
  d, data = m2_mfs
  q = build.read_quality(d)
  assert q["config"] == "m2_mfs" and q["information_density"] == 224 * 224
  assert q["frames"] == sum(len(v) for v in data.values())
  assert 0.8 <= q["face_centring_rate"] <= 1.0  # synthetic faces are found and centred
  assert q["splits"]["train"]["frames"] == len(data["train"])
  assert q["split_videos"] == {k: len({e["video_id"] for e in v}) for k, v in data.items()}
  assert "face-centring" not in q["definitions"] or q["definitions"]["face_centring_rate"]
  assert "| m2_mfs | 224x224 | gray |" in build.quality_table([q])


def test_m2_reuses_detections_across_configs(manual, data_dir, cache, m2_mfs):
  d = build.ensure_built("m2_af", str(manual), data_dir, detection_cache=cache, workers=1,
                         log=lambda *a: None)
  q = build.read_quality(d)
  assert q["detected"] == 0 and q["cached"] > 0  # every frame was detected for m2_mfs
  # AF's apex crop equals MFS's apex crop: faces are chosen over the MFS frames.
  mfs = {(e["video_id"], int(e["frame_index"])): e["image"]
         for v in m2_mfs[1].values() for e in v}
  for examples in read_all(d).values():
    for e in examples:
      assert e["role"] == b"apex"
      np.testing.assert_array_equal(e["image"], mfs[(e["video_id"], int(e["frame_index"]))])


def test_m2_examples_decode_to_the_preprocessing_output(manual, cache, m2_mfs):
  # The build PNG-encodes in its worker processes (pixels.encode_png) and
  # hands TFDS the bytes; what a reader decodes is what preprocess_videos made.
  _, data = m2_mfs
  index = {v.video_id: v for v in casme2.load_casme2(manual).videos}
  ids = sorted({e["video_id"].decode() for e in data["test"]})
  items = [(index[i], phases.select_frames(index[i], Phase.MFS)) for i in ids]
  want = {(v.video_id, n): im for v, n, im in
          runner.preprocess_videos(items, "m2", cache_dir=cache, workers=1)}
  assert len(want) == len(data["test"])
  for e in data["test"]:
    np.testing.assert_array_equal(e["image"], want[(e["video_id"].decode(),
                                                    int(e["frame_index"]))])


def test_m1_af_is_the_centre_crop_of_the_apex_frame(manual, data_dir, cache):
  d = build.ensure_built("m1_af", str(manual), data_dir, detection_cache=cache, workers=2,
                         log=lambda *a: None)
  index = {v.video_id: v for v in casme2.load_casme2(manual).videos}
  data = read_all(d)
  assert sum(len(v) for v in data.values()) == len(index)  # one frame per video
  for e in data["test"]:
    v = index[e["video_id"].decode()]
    want = pixels.centre_crop(pixels.read_frame(v.frames[v.apex]), 384)
    np.testing.assert_array_equal(e["image"], want)  # PNG is lossless
  assert build.read_quality(d)["information_density"] == 384 * 384 * 3


def test_m3_kfs_holds_the_flow_from_each_onset(manual, data_dir, cache, m2_mfs):
  """M3 (flow) through the TFDS build: onset -> apex and onset -> offset per video,
  224x224x3, its Table I figures, and the motion of the synthetic clips in the flow."""
  d = build.ensure_built("m3_kfs", str(manual), data_dir, detection_cache=cache, workers=1,
                         log=lambda *a: None)
  index = {v.video_id: v for v in casme2.load_casme2(manual).videos}
  data = read_all(d)
  seen = collections.defaultdict(list)
  for examples in data.values():
    for e in examples:
      assert e["image"].shape == (224, 224, 3) and e["image"].dtype == np.uint8
      seen[e["video_id"].decode()].append((int(e["frame_index"]), e["role"].decode()))
  assert sorted(seen) == sorted(index)
  for vid, got in seen.items():
    v = index[vid]
    assert sorted(got) == [(f.frame_index, f.role) for f in phases.select_frames(v, Phase.KFS)
                           if f.frame_index != v.onset or v.apex == v.onset == v.offset]
  q = build.read_quality(d)
  assert q["config"] == "m3_kfs" and q["information_density"] == 224 * 224 * 3
  assert q["detected"] == 0  # m2_mfs detected every frame (the onset is an MFS frame)
  assert q["landmark_fallback_videos"] == [] and q["flow"]["scale_px"] == 10.0
  assert 0.8 <= q["face_centring_rate"] <= 1.0
  assert "| m3_kfs | 224x224 | flow (u, v, magnitude) |" in build.quality_table([q])
  # The apex's flow is motion (the synthetic clips move up to ~9 px at the apex).
  apex = [e["image"] for v in data.values() for e in v
          if e["role"] == b"apex" and e["apex"] != e["onset"]]
  assert apex and np.median([np.percentile(im[..., 2], 99) for im in apex]) > 255 * 2 / 10


def test_missing_manual_dir_gives_instructions_and_no_dataset(tmp_path):
  with pytest.raises(casme2.Casme2Error, match="CASME2_RAW_selected"):
    build.ensure_built("m2_kfs", str(tmp_path / "nowhere"), str(tmp_path / "tfds"),
                       log=lambda *a: None)
  assert not list((tmp_path / "tfds").rglob("dataset_info.json"))


def test_missing_frame_stops_the_build_and_names_it(manual, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(manual, copy)
  v = casme2.load_casme2(copy).videos[0]
  os.remove(v.frames[v.apex])
  det = str(tmp_path / "detections")  # the second build reuses the first's detections
  with pytest.raises(casme2.Casme2Error, match=rf"{v.video_id}.*img{v.apex}\.jpg|img{v.apex}\.jpg.*{v.video_id}"):
    build.ensure_built("m2_kfs", str(copy), str(tmp_path / "tfds"), detection_cache=det,
                       workers=1, log=lambda *a: None)
  assert not list((tmp_path / "tfds").rglob("dataset_info.json"))  # nothing looks complete
  # The explicit option skips the frame and reports it.
  d = build.ensure_built("m2_kfs", str(copy), str(tmp_path / "tfds"), detection_cache=det,
                         workers=1, skip_unreadable=True, log=lambda *a: None)
  q = build.read_quality(d)
  assert any(f"img{v.apex}.jpg" in s for s in q["skipped"])
  total = sum(len(e) for e in read_all(d).values())
  index = casme2.load_casme2(copy).videos
  assert total == sum(len(phases.select_frames(x, Phase.KFS)) for x in index) - 1


def test_registered_builder_builds_what_training_reuses(manual, cache, m2_mfs, tmp_path,
                                                      monkeypatch):
  """datasets/casme2 (what TFDS's own `tfds build` loads), with the options the `tfds`
  command cannot pass read from the environment."""
  # m2_mfs has filled the detection cache with every frame this build needs.
  monkeypatch.setenv("MER_JAX_DETECTION_CACHE", cache)
  monkeypatch.setenv("MER_JAX_WORKERS", "1")
  spec = importlib.util.spec_from_file_location(
      "casme2_dataset_builder", ROOT / "datasets" / "casme2" / "casme2_dataset_builder.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.Builder(config="m1_kfs", data_dir=str(tmp_path)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  d = tmp_path / "casme2" / "m1_kfs" / str(tfds_builder.VERSION)
  assert json.loads((d / "quality.json").read_text())["detected"] == 0  # the env's cache
  assert list(d.glob("*.array_record*"))
  data = read_all(d)
  assert data["train"][0]["image"].shape == (384, 384, 3)
  # TFDS's own build records the same fingerprint, so training reuses it.
  fp = json.loads((d / "fingerprint.json").read_text())
  assert fp["source"] == os.path.realpath(manual) and fp["synthetic"]["videos"] == 16
  assert build.find_build("m1_kfs", str(manual), tmp_path, log=lambda *a: None) == d


def test_build_cli_quality_table(manual, m2_mfs, data_dir, capsys):
  assert build.main(["--quality", "--configs", "m2_mfs", "--data_dir", data_dir,
                     "--manual_dir", str(manual)]) == 0
  assert "| m2_mfs | 224x224 | gray |" in capsys.readouterr().out
  with pytest.raises(ValueError, match="m4_af"):
    build.main(["--configs", "m4_af"])


# --- Fingerprints: a build knows its source and is never handed out for another ---


def sha256(path) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_a_build_records_its_source(manual, m2_mfs):
  d, _ = m2_mfs
  fp = json.loads((pathlib.Path(d) / "fingerprint.json").read_text())
  sheet = casme2.load_casme2(manual).sheet
  assert fp["source"] == os.path.realpath(manual)
  assert fp["sheet"] == {"name": sheet.name, "sha256": sha256(sheet)}
  # conftest's synthetic_casme2: 16 videos, 4 subjects, seed 3, intensity 1.
  assert {k: fp["synthetic"][k] for k in ("videos", "subjects", "seed", "intensity")} == \
      {"videos": 16, "subjects": 4, "seed": 3, "intensity": 1.0}
  assert fp["version"] == str(tfds_builder.VERSION) and len(fp["code"]) == 12
  assert f"/{fingerprint.key(fp)}/casme2/m2_mfs/" in d


def test_code_version_follows_every_module_that_makes_the_examples(tmp_path, monkeypatch):
  """A change to any module that decides pixels or labels changes the version."""
  for name in fingerprint.CODE_MODULES:
    shutil.copy(ROOT / "mer_jax" / "data" / f"{name}.py", tmp_path)
  monkeypatch.setattr(fingerprint, "HERE", tmp_path)
  version = fingerprint.code_version.__wrapped__   # without its cache
  assert version() == fingerprint.code_version()
  for name in ("preprocess", "splits", "tfds_builder"):
    before = version()
    with open(tmp_path / f"{name}.py", "a") as f:
      f.write("\nX = 1\n")
    assert version() != before, name


def test_another_source_sheet_or_synthetic_setting_builds_anew(manual, cache, tmp_path):
  """The same config from a symlink to its source reuses the build; from a copy,
  another sheet or other synthetic settings it never does, and each build
  keeps the source, sheet and settings it was asked for."""
  data_dir = tmp_path / "tfds"
  logs = []

  def built(src, **options):
    return pathlib.Path(build.ensure_built("m2_af", str(src), str(data_dir), workers=1,
                                           detection_cache=cache, log=logs.append, **options))

  first = built(manual)
  (tmp_path / "link").symlink_to(manual)
  assert built(tmp_path / "link") == first
  copy = tmp_path / "copy"
  shutil.copytree(manual, copy)
  from_copy = built(copy)
  assert from_copy != first and "source" in logs[-2] and str(copy) in logs[-2]
  csv = next(copy.glob("CASME2-coding*.csv"))
  from_csv = built(copy, sheet=str(csv))
  syn = json.loads((copy / "synthetic.json").read_text())
  (copy / "synthetic.json").write_text(json.dumps(dict(syn, seed=4)))
  from_seed4 = built(copy)
  assert "synthetic" in logs[-2] and "seed 3" in logs[-2] and "seed 4" in logs[-2]
  dirs = [first, from_copy, from_csv, from_seed4]
  assert len(set(dirs)) == 4 and all(build.is_built(tfds.builder_from_directory(str(d)))
                                     for d in dirs)
  # Each build holds what it was asked for, read independently of mer_jax.data.fingerprint.
  for d, src, sheet, seed in [(first, manual, casme2.find_sheet(manual), 3),
                              (from_copy, copy, casme2.find_sheet(copy), 3),
                              (from_csv, copy, csv, 3), (from_seed4, copy, csv.with_suffix(".xlsx"), 4)]:
    fp = json.loads((d / "fingerprint.json").read_text())
    assert fp["source"] == os.path.realpath(src) and fp["sheet"]["sha256"] == sha256(sheet)
    assert fp["synthetic"]["seed"] == seed
    assert build.read_quality(d)["manual_dir"] == str(src)  # what TFDS handed the builder
  assert build.ensure_built("m2_af", str(copy), str(data_dir), log=logs.append) == str(from_seed4)
  listed = capture_list(data_dir)
  assert listed.count("m2_af  ") == 4 and str(copy) in listed and csv.name in listed


def capture_list(data_dir) -> str:
  out = subprocess.run([sys.executable, "-m", "mer_jax.data.build", "--list", "--data_dir",
                        str(data_dir)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_old_builds_and_killed_builds_are_not_reused_or_left(manual, cache, m2_mfs, tmp_path):
  """A build without fingerprint.json (made before builds had one) is rebuilt,
  saying why; an `incomplete.*` folder a killed build left is gone afterwards."""
  data_dir = tmp_path / "tfds"
  legacy = data_dir / "casme2" / "m2_mfs" / str(tfds_builder.VERSION)
  shutil.copytree(m2_mfs[0], legacy)
  (legacy / "fingerprint.json").unlink()
  want = build.builder("m2_af", str(data_dir)).source_fingerprint(manual)
  config_dir = data_dir / build.sources_dir("casme2") / fingerprint.key(want) / "casme2" / "m2_mfs"
  stale = config_dir / f"incomplete.ABC123_{tfds_builder.VERSION}"
  stale.mkdir(parents=True)
  (stale / "casme2-train.array_record-00000-of-00001").write_bytes(b"half")
  logs = []
  d = build.ensure_built("m2_mfs", str(manual), str(data_dir), workers=1,
                         detection_cache=cache, log=logs.append)
  assert pathlib.Path(d).parent == config_dir and legacy.exists()
  assert any("no fingerprint.json" in line and str(legacy) in line for line in logs)
  assert not list(config_dir.glob("incomplete.*"))
  assert "no fingerprint.json" in capture_list(data_dir)


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    RuntimeError("RESOURCE_EXHAUSTED: write failed: No space left on device")])
def test_a_full_disk_ends_in_one_line_with_the_space_needed(manual, cache, tmp_path, monkeypatch,
                                                             capsys, error):
  def full(cls, path, iterator):
    raise error
  monkeypatch.setattr(tfds.core.file_adapters.ArrayRecordFileAdapter, "write_examples",
                      classmethod(full))
  data_dir = tmp_path / "tfds"
  with pytest.raises(SystemExit) as exit_:
    cli.run(build.main, ["--configs", "m2_af", "--manual_dir", str(manual), "--data_dir",
                         str(data_dir), "--workers", "1", "--detection_cache", cache])
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  err = [line for line in err.splitlines() if line.startswith("error:")]  # TFDS's bars aside
  assert len(err) == 1, err
  # AF: one 224x224 gray image per video, 16 videos.
  need = 16 * 224 * 224
  assert err[0].startswith(f"error: no space left on device while building m2_af into "
                           f"{data_dir}: free about ")
  assert f"under {data_dir} (the build needs about {need / 1e6:.1f} MB for 16 images" in err[0]
  assert not list(data_dir.rglob("dataset_info.json"))
