"""Faces: dlib on a real face, the video's face, borrowing, steady box, the detection cache."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import skimage.data
from PIL import Image

from frames_helpers import (H, W, StubDetector, face_patch, make_frame, make_video, marked,
                            three_videos)
from mer_jax.data import faces, runner
from mer_jax.data import pixels
from mer_jax.data import preprocess as pp


# --- dlib ------------------------------------------------------------------------


def test_dlib_finds_the_astronaut_and_m2_crop_contains_her_face(tmp_path):
  rgb = make_frame()
  rgb[:, 64:576] = skimage.data.astronaut()[:480]
  # Brows, eyes, mouth corners and chin in the 512x512 image (the landmarks that
  # mer_jax.data.synthetic located by eye), shifted onto the canvas.
  landmarks = np.array([(200, 92), (248, 93), (203, 102), (247, 103), (205, 143), (243, 143),
                        (225, 168)]) + [64, 0]
  found = faces.FaceDetector()(rgb)
  assert found, "dlib found no face in skimage's astronaut"
  v = make_video(tmp_path, {1: rgb})
  (image,), report = pp.preprocess_video(v, [1], pp.Method.M2)
  chosen = faces.choose_faces({1: found})[1]
  cx, cy = landmarks.mean(axis=0)
  assert chosen[0] < cx < chosen[2] and chosen[1] < cy < chosen[3]
  left, top, right, bottom = pixels.expand_box(chosen, H, W)
  assert (landmarks > [left, top]).all() and (landmarks < [right, bottom]).all()
  np.testing.assert_array_equal(image, pixels.face_crop(rgb, chosen))
  assert report.detected == 1 and report.centred == 1 and not report.fallback


def test_half_size_detection_maps_back_to_full_size_boxes():
  rgb = make_frame([(face_patch(2.0), 150, 60)])
  half = faces.FaceDetector(scales=(0.5,))(rgb)
  full = faces.FaceDetector(scales=(1.0,))(rgb)
  assert len(half) == 1 and len(full) == 1
  assert faces.box_iou(half[0], full[0]) > 0.6
  # The patch's face (hand-located, face patch coordinates x 50..120, y 55..145) x2.
  cx, cy = (half[0][0] + half[0][2]) / 2, (half[0][1] + half[0][3]) / 2
  assert abs(cx - (150 + 85 * 2)) < 25 and abs(cy - (60 + 100 * 2)) < 35


def test_landmark_models_ship_in_the_package():
  for points in (5, 68):
    path = faces.landmark_model_path(points)
    assert path.is_file() and path.stat().st_size > 1_000_000
  with pytest.raises(ValueError):
    faces.landmark_model_path(12)


def test_landmarks_of_the_astronaut_are_her_eye_corners_and_nose():
  rgb = skimage.data.astronaut()
  gray = np.asarray(Image.fromarray(rgb).convert("L"))
  box = max(faces.FaceDetector(scales=(1.0,))(rgb), key=faces.box_score)
  points = faces.LandmarkDetector()(gray, box)
  assert points.shape == (5, 2) and points.dtype == np.float64
  # Hand-located in the 512x512 image (mer_jax.data.synthetic's landmarks + its patch
  # offset): eyes about (203, 102) and (247, 103), nose tip (225, 124), upper lip (225, 139).
  image_left_eye, image_right_eye = points[2:4].mean(0), points[0:2].mean(0)
  assert np.hypot(*(image_left_eye - (203, 102))) < 6
  assert np.hypot(*(image_right_eye - (247, 103))) < 6
  assert abs(points[4][0] - 225) < 6 and 124 < points[4][1] < 139  # the nose's base
  assert faces.LandmarkDetector(68)(gray, box).shape == (68, 2)
  lm = faces.LandmarkDetector()
  assert lm(gray, None) is None and lm(gray, (10, 10, 14, 14)) is None  # no box, too small
  assert lm(gray, (600, 600, 700, 700)) is None                       # outside the image
  with pytest.raises(ValueError, match="gray uint8"):
    lm(rgb, box)


# --- the video's face ------------------------------------------------------------------


def test_several_faces_rule_on_hand_made_boxes():
  f = [100, 100, 300, 300, 1.0]
  stray = [350, 50, 620, 400, 1.5]    # larger and higher-scoring, in one frame only
  shifted = [110, 100, 310, 300, 0.9]
  dets = {1: [f], 2: [f, [400, 300, 480, 380, 0.2]], 3: [stray, shifted], 4: [f],
          5: [[500, 0, 560, 60, 0.5]]}
  chosen = faces.choose_faces(dets)
  assert chosen[1] == f and chosen[2] == f and chosen[4] == f
  assert chosen[3] == shifted          # the video's face, not the frame's best box
  assert chosen[5] is None             # nothing overlaps the video's face
  boxes = faces.borrow_nearest(chosen)
  assert boxes[5] == (f, 4)
  assert faces.borrow_nearest({1: f, 2: None, 3: shifted})[2] == (f, 1)  # tie: earlier
  assert faces.choose_faces({1: [], 2: []}) == {1: None, 2: None}
  # In one frame, the higher score wins over the larger box (a HOG false positive).
  suit = [80, 250, 300, 470, 0.03]
  assert faces.choose_faces({1: [suit, f]})[1] == f


def test_two_real_faces_the_video_keeps_one(tmp_path):
  big, small = face_patch(1.8), face_patch(1.6)
  frames = {n: make_frame([(big, 5 + n, 20), (small, 635 - small.shape[1], 60)]) for n in (1, 2, 3)}
  v = make_video(tmp_path, frames)
  detector = faces.FaceDetector()
  images, report = pp.preprocess_video(v, [1, 2, 3], pp.Method.M2, detector=detector)
  dets = {n: detector(rgb) for n, rgb in frames.items()}
  assert all(len(d) == 2 for d in dets.values())
  chosen = faces.choose_faces(dets)
  centres = [(b[0] + b[2]) / 2 for b in chosen.values()]
  assert max(centres) - min(centres) < 40     # the same face in every frame
  for n, image in zip((1, 2, 3), images):
    np.testing.assert_array_equal(image, pixels.face_crop(frames[n], chosen[n]))
  assert report.borrowed == [] and report.centred == 3


def test_no_face_frame_borrows_nearest_detection(tmp_path):
  patch = face_patch(2.0)
  frames = {1: make_frame([(patch, 100, 40)]), 2: make_frame([(patch, 110, 40)]), 3: make_frame(),
            4: make_frame([(patch, 150, 40)])}
  v = make_video(tmp_path, frames)
  images, report = pp.preprocess_video(v, [3, 1], pp.Method.M2)
  box2 = faces.choose_faces({n: faces.FaceDetector()(frames[n]) for n in (1, 2, 4)})[2]
  # Without context, frame 3's nearest is frame 1; with frames 2 and 4 (tie), frame 2.
  assert report.borrowed == [(3, 1)]
  images, report = pp.preprocess_video(v, [3], pp.Method.M2, context_frames=[1, 2, 4])
  assert report.borrowed == [(3, 2)] and report.centred == 0 and report.frames == 1
  np.testing.assert_array_equal(images[0], pixels.face_crop(frames[3], box2))


def test_steady_box_uses_the_median_box_everywhere(tmp_path):
  boxes = {1: [200, 100, 380, 280, 1.0], 2: [190, 90, 406, 306, 1.0], 3: [200, 100, 380, 280, 1.0]}
  detector = StubDetector({n: [b] for n, b in boxes.items()})
  v = make_video(tmp_path, {n: marked(n) for n in (1, 2, 3, 4)})
  images, report = pp.preprocess_video(v, [1, 2, 3, 4], pp.Method.M2, detector=detector,
                                       steady_box=True)
  median = [200, 100, 380, 280]
  for n, image in zip((1, 2, 3, 4), images):
    np.testing.assert_array_equal(image, pixels.face_crop(marked(n), median))
  assert report.borrowed == [(4, None)]
  assert report.box_size_ratio == pytest.approx(216 / 180)


# --- the detection cache --------------------------------------------------------------------


_NEW_PROCESS = """
import json, pathlib, sys
import numpy as np
from mer_jax.data import faces, preprocess as pp
from mer_jax.data.videos import Video

class NoDetector:
  key = faces.FaceDetector().key
  def __call__(self, rgb):
    raise AssertionError("detector called despite the cache")

a = json.loads(sys.argv[1])
frames = {int(n): pathlib.Path(p) for n, p in a["frames"].items()}
video = Video("casme2", "sub01", "EP00_01", 1, 2, 3, "others", frames)
images, report = pp.preprocess_video(video, [3, 1], "m2", context_frames=[1, 2, 3],
                                     cache=faces.DetectionCache(a["cache"]),
                                     detector=NoDetector())
np.save(a["out"], np.stack(images))
print(report.cached)
"""


def test_cache_is_hit_on_the_second_run_and_survives_a_new_process(tmp_path, monkeypatch):
  items = three_videos(tmp_path)
  cache = tmp_path / "cache"
  calls = []
  real_call = faces.FaceDetector.__call__
  monkeypatch.setattr(faces.FaceDetector, "__call__",
                      lambda self, rgb: calls.append(1) or real_call(self, rgb))
  context = {v.video_id: [1, 2, 3] for v, _ in items}
  first = runner.preprocess_videos(items, pp.Method.M2, context=context, cache_dir=cache,
                                   workers=1)
  images = [im for *_, im in first]
  assert len(calls) == 9 and first.report.detected == 9 and first.report.cached == 0
  second = runner.preprocess_videos(items, pp.Method.M2, context=context, cache_dir=cache,
                                    workers=1)
  again = [im for *_, im in second]
  assert len(calls) == 9 and second.report.cached == 9 and second.report.detected == 0
  for a, b in zip(images, again):
    np.testing.assert_array_equal(a, b)
  assert len(list(cache.glob("*/*.json"))) == 9

  # A new Python process, whose detector must not be called.
  v = items[0][0]
  args = json.dumps({"frames": {n: str(p) for n, p in v.frames.items()},
                     "cache": str(cache), "out": str(tmp_path / "sub.npy")})
  out = subprocess.run([sys.executable, "-c", _NEW_PROCESS, args], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == "3"
  np.testing.assert_array_equal(np.load(tmp_path / "sub.npy"), np.stack(images[:2]))

  # An edited frame is detected again.
  Image.fromarray(make_frame([(face_patch(2.0), 300, 40)])).save(v.frames[2])
  third = runner.preprocess_videos(items[:1], pp.Method.M2, context=context, cache_dir=cache,
                                   workers=1)
  list(third)
  assert third.report.detected == 1 and third.report.cached == 2


def test_cache_writes_are_atomic_under_concurrency(tmp_path):
  file_ = tmp_path / "img1.png"
  Image.fromarray(marked(1, 8, 8)).save(file_)
  cache = faces.DetectionCache(tmp_path / "cache")
  cache.put(file_, "k", [[0, 0, 1, 1, 0.5]])
  entry = next((tmp_path / "cache").glob("*/*.json"))
  errors = []

  def write(i):
    for j in range(100):
      cache.put(file_, "k", [[i, j, i + 1, j + 1, 0.5]] * 50)

  def read():
    for _ in range(300):
      try:
        json.loads(entry.read_text())
      except ValueError as e:
        errors.append(e)

  threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
  threads.append(threading.Thread(target=read))
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert errors == []
  assert len(cache.get(file_, "k")) == 50 and cache.get(file_, "other key") is None
  assert not list((tmp_path / "cache").glob("*/.tmp-*"))


def test_detection_cache_lives_under_mer_jaxs_cache_root(monkeypatch, tmp_path):
  monkeypatch.delenv("MER_JAX_CACHE", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert faces.default_cache_dir() == tmp_path / "xdg" / "mer_jax" / "detections"
  monkeypatch.setenv("MER_JAX_CACHE", str(tmp_path / "mine"))
  assert faces.DetectionCache().dir == tmp_path / "mine" / "detections"
