"""The SAMM, SMIC-HS and CAS(ME)^3 readers, the registry, label schemes and the MEGC mapping."""
import collections
import csv
import random

import numpy as np
import openpyxl
import pytest

from mer_jax.data import (DATASETS, apex, labels, load, load_videos, megc, summary, synthetic,
                          sheets)
from mer_jax.data.videos import Video
from mer_jax.plumbing.errors import UsageError

SAMM_HEADER = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame",
               "Offset Frame", "Duration", "Micro", "Objective Classes", "Notes",
               "Estimated Emotion", "Action Units"]


def _xlsx(path, rows):
  wb = openpyxl.Workbook()
  for r in rows:
    wb.active.append(r)
  wb.save(path)


def _frames(folder, names):
  folder.mkdir(parents=True, exist_ok=True)
  for n in names:
    (folder / n).write_bytes(b"x")


# --- stand-ins written by the renderer ------------------------------------------------


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
  root = tmp_path_factory.mktemp("stand_ins")
  return {d: synthetic.write_stand_in(d, root / d, videos=6, subjects=3, length=5)
          for d in ("samm", "smic_hs", "casme3")}


@pytest.mark.parametrize("dataset", ["samm", "smic_hs", "casme3"])
def test_stand_in_reads_back(stand_ins, dataset):
  vs = load_videos(dataset, stand_ins[dataset])
  assert len(vs) == 6 and all(v.dataset == dataset for v in vs)
  # Labels in the dataset's proportions, drawn by the writer's own count rule.
  real = {"samm": synthetic.SAMM_COUNTS, "smic_hs": synthetic.SMIC_HS_COUNTS}.get(
      dataset, {e: 1 for e in labels.NATIVE[dataset]})
  want = {e: c for e, c in synthetic.class_counts(6, real).items() if c}
  assert collections.Counter(v.emotion for v in vs) == want
  assert len({v.video_id for v in vs}) == 6
  assert all(v.video_id.startswith(f"{dataset}/{v.subject}/") for v in vs)
  for v in vs:
    assert v.onset <= v.apex <= v.offset and set(range(v.onset, v.offset + 1)) <= set(v.frames)
  if dataset == "samm":
    assert [v.apex_rule for v in vs].count("middle") == 1   # the sheet's -1
    assert {len(p.stem.split("_")[1]) for v in vs for p in v.frames.values()} == {4, 5}
  if dataset == "smic_hs":
    assert {p.suffix for v in vs for p in v.frames.values()} == {".bmp"}
    assert all(v.apex == (v.onset + v.offset) // 2 and v.apex_rule == "middle" for v in vs)
  if dataset == "casme3":
    assert any(v.episode.endswith("_2") for v in vs)     # repeated filenames suffixed


def test_stand_in_pixels(stand_ins):
  from mer_jax.data.pixels import read_frame
  samm = load_videos("samm", stand_ins["samm"])[0]
  img = read_frame(next(iter(samm.frames.values())))
  assert img.shape == (109, 204, 3)                            # 2040x1088 / 10
  assert np.array_equal(img[..., 0], img[..., 1])              # gray
  smic = load_videos("smic_hs", stand_ins["smic_hs"])[0]
  assert read_frame(next(iter(smic.frames.values()))).shape == (240, 320, 3)   # 640x480 / 2
  casme3 = load_videos("casme3", stand_ins["casme3"])[0]
  assert read_frame(next(iter(casme3.frames.values()))).shape == (180, 320, 3)  # 1280x720 / 4


@pytest.mark.parametrize("dataset", ["casme2", "samm", "smic_hs", "casme3"])
def test_stand_in_faces_are_found_where_drawn(stand_ins, synthetic_casme2, dataset):
  """The build's face path (dlib through faces.FaceDetector, read as the build
  reads) finds each video's face at its onset, where the renderer drew it: the
  subject's face centre in the 640x480 render, mapped through the stand-in's cut
  to its release's aspect and shrink (M2 of a stand-in is a face crop, not the
  whole-frame fallback)."""
  import re
  from mer_jax.data import faces
  from mer_jax.data.pixels import read_frame
  root, plan = stand_ins.get(dataset), synthetic.plan(6, 3, 0, quirks=False)
  if dataset == "casme2":   # conftest's tree: plan(16, 4, seed=3)
    root, plan = synthetic_casme2, synthetic.plan(16, 4, seed=3)
  drawn = {v.subject.number: v.subject for v in plan}
  detector = faces.FaceDetector()
  for v in load_videos(dataset, root):
    rgb = read_frame(v.frames[v.onset])
    found = faces.detect_frames([v.onset], v.frames, lambda n: rgb, detector)
    box = faces.video_faces(found.faces).own[v.onset]
    assert box is not None, f"{v.video_id}: no face found in a {rgb.shape[1]}x{rgb.shape[0]} frame"
    s = drawn[int(re.search(r"\d+", v.subject).group()) - (5 if dataset == "samm" else 0)]
    h, w = rgb.shape[:2]
    k = w / synthetic.FRAME_W                       # the shrink; rows cut evenly top and bottom
    top = (synthetic.FRAME_H - min(synthetic.FRAME_H, round(synthetic.FRAME_W * h / w))) // 2
    off = np.hypot((box[0] + box[2]) / 2 - s.cx * k, (box[1] + box[3]) / 2 - (s.cy - top) * k)
    assert off < 0.15 * (box[2] - box[0]), (v.video_id, box, s)


# --- hand-built trees with the real copies' quirks ------------------------------------


def test_samm_quirks(tmp_path):
  title = [["SAMM micro-movement FACS codes"], [None], ["Notes: ..."]] + [[None]] * 10
  rows = [[6, "006_1_2", 1, 5562, 5588, 5600, 39, "Micro - 1/2", "IV", None, "Anger", "R4"],
          ["007", "007_3_1", 2, 9998, -1, 10003, 6, "Micro - 1/2", "VII", None, "Other", "12"],
          [None] * 12]
  _xlsx(tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx", title + [SAMM_HEADER] + rows)
  _frames(tmp_path / "SAMM" / "006" / "006_1_2",
          [f"006_{n:05d}.jpg" for n in range(5560, 5603)] + ["Thumbs.db"])
  _frames(tmp_path / "SAMM" / "007" / "007_3_1",
          [f"007_{n:04d}.jpg" for n in range(9998, 10004)])
  index = load("samm", tmp_path)
  a, b = index.videos
  assert (a.subject, a.episode, a.onset, a.apex, a.offset, a.emotion) == \
      ("006", "006_1_2", 5562, 5588, 5600, "anger")
  assert (b.subject, b.onset, b.apex, b.offset, b.emotion) == ("007", 9998, 10000, 10003, "other")
  assert b.apex_rule == "middle" and a.apex_rule == "sheet" and b.apex_estimated
  assert sorted(b.frames) == list(range(9998, 10004))
  assert b.frames[10003].name == "007_10003.jpg" and b.frames[9998].name == "007_9998.jpg"
  notes = "\n".join(index.notes)
  assert "header found on row 14" in notes and "Thumbs.db" in notes and "Apex Frame missing (-1)" in notes
  assert "[4, 5] digits" in notes
  # 0123 and 123 are one frame: an error naming both files.
  (tmp_path / "SAMM" / "007" / "007_3_1" / "007_09998.jpg").write_bytes(b"x")
  with pytest.raises(sheets.DatasetError, match="both frame 9998"):
    load("samm", tmp_path)


def test_samm_csv_export_and_errors(tmp_path):
  with pytest.raises(sheets.DatasetError, match="does not exist"):
    load_videos("samm", tmp_path / "none")
  _frames(tmp_path / "SAMM" / "006" / "006_1_2", [f"006_{n:04d}.jpg" for n in range(1, 9)])
  with pytest.raises(sheets.DatasetError, match="No SAMM coding sheet"):
    load_videos("samm", tmp_path)
  with open(tmp_path / "SAMM_Micro_FACS_Codes_v2.csv", "w", newline="") as f:
    csv.writer(f, delimiter=";").writerows(
        [["title"], [], SAMM_HEADER, [6, "006_1_2", 1, 2, 4, 6, 5, "", "", "", "Happiness", "12"],
         [6, "006_1_9", 1, 2, 4, 6, 5, "", "", "", "joy", "12"]])
  with pytest.raises(sheets.DatasetError, match=r"row 5.*unknown emotion 'joy'"):
    load_videos("samm", tmp_path)


def test_smic_hs_quirks(tmp_path):
  _frames(tmp_path / "s1" / "micro" / "negative" / "s1_ne_01",
          [f"image{n}.bmp" for n in range(100, 111)] + ["desktop.ini"])
  _frames(tmp_path / "S02" / "micro" / "Positive" / "s2_po_01",
          [f"reg_image{n}.bmp" for n in range(7, 12)])
  _frames(tmp_path / "s3" / "micro" / "surprise" / "s3_sur_02", ["image1.bmp", "image2.bmp"])
  (tmp_path / "s1" / "non_micro" / "x").mkdir(parents=True)
  (tmp_path / "s4").mkdir()
  index = load("smic_hs", tmp_path)
  got = [(v.subject, v.episode, v.onset, v.apex, v.offset, v.emotion, v.apex_rule)
         for v in index.videos]
  assert got == [("s1", "s1_ne_01", 100, 105, 110, "negative", "middle"),
                 ("S02", "s2_po_01", 7, 9, 11, "positive", "middle"),
                 ("s3", "s3_sur_02", 1, 1, 2, "surprise", "middle")]
  assert index.sheet is None and index.videos[0].video_id == "smic_hs/s1/s1_ne_01"
  notes = "\n".join(index.notes)
  assert "non_micro" in notes and "desktop.ini" in notes and "reg_image" in notes
  with pytest.raises(sheets.DatasetError, match="apex='peak'"):
    load("smic_hs", tmp_path, apex="peak")
  with pytest.raises(sheets.DatasetError, match=r"No subject folders \(s1"):
    load("smic_hs", tmp_path / "s1")


def test_casme3_repeated_filenames(tmp_path):
  header = ["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]
  rows = [["spNO.1", "a", 300, 310, 320, "12", 1, "happy"],
          ["spNO.1", "a", 100, 105, 110, "4", 2, "Disgust"],
          ["spNO.1", "b", 10, "/", 20, "1+2", 3, "surprise"],
          ["spNO.2", "a", 50, 52, 60, "", 7, "others"],
          ["spNO.1", "A", 200, 205, 210, "", 7, "sadness"]]
  for s, f in (("spNO.1", "a"), ("spNO.1", "b"), ("spNO.2", "a")):
    _frames(tmp_path / "data" / "part_A" / s / f / "color",
            [f"{n}.jpg" for n in range(1, 330)])
  (tmp_path / "data" / "part_A" / "spNO.1" / "a" / "depth").mkdir()

  def read(order):
    _xlsx(tmp_path / "cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx",
          [header] + [rows[i] for i in order])
    return {(v.subject, v.onset): v for v in load_videos("casme3", tmp_path)}

  got = read(range(5))
  # Repeats of one filename within a subject: suffixed 1, 2, 3 in onset order.
  assert {k: v.episode for k, v in got.items()} == {
      ("spNO.1", 300): "a_3", ("spNO.1", 100): "a_1", ("spNO.1", 200): "a_2",
      ("spNO.1", 10): "b", ("spNO.2", 50): "a"}
  v = got["spNO.1", 10]
  assert (v.apex, v.apex_rule, v.emotion) == (15, "middle", "surprise")
  assert sorted(got["spNO.1", 100].frames) == list(range(100, 111))  # the clip's frames only
  assert got["spNO.1", 200].emotion == "sad" and got["spNO.1", 100].emotion == "disgust"
  assert len({v.video_id for v in got.values()}) == 5
  # The suffixes do not depend on the sheet's row order.
  order = list(range(5))
  random.Random(0).shuffle(order)
  assert {k: v.episode for k, v in read(order).items()} == {k: v.episode for k, v in got.items()}


def test_registry_and_summary(tmp_path, capsys, stand_ins):
  assert DATASETS == ("casme2", "samm", "smic_hs", "casme3")
  with pytest.raises(UsageError, match="unknown dataset 'smic'"):
    load_videos("smic", tmp_path)
  assert summary.main(["--dataset", "samm", str(stand_ins["samm"])]) == 0
  out = capsys.readouterr().out
  assert "6 videos of 3 subjects (samm" in out and "header found on row 14" in out
  assert "apex: middle 1, sheet 5" in out and "MEGC 2019 3-class: negative" in out


def test_flow_apex_spotting(tmp_path):
  """A square moving out and back: the apex is the frame of the largest displacement."""
  import cv2
  shifts = {1: 0, 2: 1, 3: 3, 4: 6, 5: 4, 6: 2, 7: 1}
  frames = {}
  for n, dx in shifts.items():
    img = np.full((96, 128), 90, np.uint8)
    cv2.GaussianBlur(img, (0, 0), 1, dst=img)
    img[30:60, 40 + dx:70 + dx] = 200
    img = cv2.GaussianBlur(img, (0, 0), 1.5)
    frames[n] = tmp_path / f"image{n}.bmp"
    cv2.imwrite(str(frames[n]), img)
  motion = apex.motion_from_onset(frames, 1, 7)
  assert sorted(motion) == [2, 3, 4, 5, 6, 7]
  assert max(motion, key=motion.get) == 4 == apex.spot_apex(frames, 1, 7)
  # Motion grows with the displacement (the flow sees the square move).
  assert motion[2] < motion[3] < motion[4] and motion[4] > motion[5] > motion[6]


# --- label schemes and the MEGC 2019 mapping -----------------------------------------


def _table(dataset, counts, subjects):
  """Videos of `dataset` with these label counts, dealt to subjects round-robin."""
  labels_ = [e for e, c in counts.items() for _ in range(c)]
  return [Video(dataset, subjects[i % len(subjects)], f"ep{i}", 1, 2, 3, e, {})
          for i, e in enumerate(labels_)]


SAMM_PUBLISHED = {"anger": 57, "contempt": 12, "disgust": 9, "fear": 8, "happiness": 26,
                  "sadness": 6, "surprise": 15, "other": 26}


def test_megc_counts_on_the_real_label_counts():
  three = lambda vs: collections.Counter(megc.three_class(v) for v in vs)
  samm = three(_table("samm", SAMM_PUBLISHED, ["006"]))
  assert (samm["negative"], samm["positive"], samm["surprise"], samm[None]) == (92, 26, 15, 26)
  smic = three(_table("smic_hs", synthetic.SMIC_HS_COUNTS, ["s1"]))
  assert (smic["negative"], smic["positive"], smic["surprise"], smic[None]) == (70, 51, 43, 0)
  casme2 = three(_table("casme2", synthetic.REAL_COUNTS, ["sub01"]))
  # The rules on CASME II's 255: disgust 63 + repression 27 = 90 negatives; the
  # published list has 88 (megc.py's docstring).
  assert (casme2["negative"], casme2["positive"], casme2["surprise"]) == (90, 32, 25)
  assert casme2[None] == 99 + 7 + 2
  published = {d: sum(c) for d, c in megc.COUNTS.items()}
  assert published == {"casme2": 145, "samm": 133, "smic_hs": 164}
  assert sum(published.values()) == 442
  assert samm["negative"] + samm["positive"] + samm["surprise"] == published["samm"]
  assert 90 + 32 + 25 - 2 == published["casme2"]
  assert tuple(sum(three(_table(d, c, ["x"]))[k] for d, c in
                   (("samm", SAMM_PUBLISHED), ("smic_hs", synthetic.SMIC_HS_COUNTS)))
               for k in megc.SCHEME.classes) == (92 + 70, 26 + 51, 15 + 43)


def test_composite_subjects_are_distinct_across_datasets():
  """68 subjects: CASME II's 26 less 2 whose videos are all dropped, SAMM's 28 with
  a kept video, SMIC-HS's 16; ids never collide across datasets (sub06, 006, s6)."""
  casme2 = _table("casme2", {"disgust": 48, "happiness": 24, "surprise": 24},
                  [f"sub{i:02d}" for i in range(1, 25)]) + \
      _table("casme2", {"others": 4}, ["sub25", "sub26"])
  samm = _table("samm", {"anger": 56}, [f"{i:03d}" for i in range(6, 34)]) + \
      _table("samm", {"other": 4}, [f"{i:03d}" for i in range(34, 38)])
  smic = _table("smic_hs", {"negative": 32}, [f"s{i}" for i in range(1, 17)])
  kept = [v for v in casme2 + samm + smic if megc.three_class(v) is not None]
  per = collections.Counter(v.dataset for v in {v.subject_id: v for v in kept}.values())
  assert dict(per) == megc.SUBJECTS and sum(per.values()) == 68
  assert len({v.video_id for v in casme2 + samm + smic}) == len(casme2 + samm + smic)
  assert Video("casme2", "sub06", "EP01", 1, 2, 3, "others", {}).video_id == "sub06/EP01"


def test_schemes():
  assert {n: len(s.classes) for n, s in labels.SCHEMES.items()} == {
      "casme2": 7, "samm": 8, "smic_hs": 3, "casme3": 7, "casme3_4": 4, "casme3_3": 3,
      "megc3": 3}
  assert labels.scheme("casme2").classes == labels.EMOTIONS
  v = Video("casme2", "sub01", "EP01", 1, 2, 3, "repression", {})
  assert v.label == labels.EMOTIONS.index("repression") == 3
  c3 = [Video("casme3", "spNO.1", e, 1, 2, 3, e, {}) for e in labels.NATIVE["casme3"]]
  assert [labels.scheme("casme3_4").class_of(v) for v in c3] == \
      ["negative", "negative", "negative", "positive", "negative", "surprise", "others"]
  assert [megc.three_class(v) for v in c3] == \
      ["negative", "negative", "negative", "positive", "negative", "surprise", None]
  assert [labels.scheme("casme3_3").index(v) for v in c3] == [0, 0, 0, 1, 0, 2, None]
  with pytest.raises(ValueError, match="no class for samm"):
    Video("samm", "006", "x", 1, 2, 3, "contempt", {}).label
  with pytest.raises(UsageError, match="unknown label scheme"):
    labels.scheme("megc")
