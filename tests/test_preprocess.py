"""M1/M2 preprocessing: geometry by hand, dlib on a real face, face choice, cache, workers."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest
import skimage.data
from PIL import Image

from mer_jax.data import preprocess as pp
from mer_jax.data.casme2 import Casme2Error, Video

H, W = 480, 640


# --- helpers -------------------------------------------------------------------


def _face(scale: float = 2.0) -> np.ndarray:
  """The astronaut's face and hair, scaled to about CASME II's face size (~200 px box)."""
  patch = Image.fromarray(skimage.data.astronaut()[30:215, 140:310])
  return np.asarray(patch.resize((round(170 * scale), round(185 * scale)), Image.BICUBIC))


def _frame(faces=(), background: int = 128) -> np.ndarray:
  """A 640x480 frame with face patches pasted at (x, y) top-left corners."""
  frame = np.full((H, W, 3), background, np.uint8)
  for patch, x, y in faces:
    frame[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
  return frame


def _video(tmp: pathlib.Path, frames: dict[int, np.ndarray], name: str = "EP01_01") -> Video:
  """A Video whose frames are lossless PNG files, so crops can be compared exactly."""
  folder = tmp / "sub01" / name
  folder.mkdir(parents=True, exist_ok=True)
  paths = {}
  for n, rgb in frames.items():
    paths[n] = folder / f"img{n}.png"
    Image.fromarray(rgb).save(paths[n])
  ns = sorted(frames)
  return Video("sub01", name, ns[0], ns[len(ns) // 2], ns[-1], "others", paths)


class StubDetector:
  """Boxes looked up by a frame's top-left pixel value; counts calls."""
  key = "stub"

  def __init__(self, boxes_by_value: dict[int, list]):
    self.boxes_by_value = boxes_by_value
    self.calls = 0

  def __call__(self, rgb):
    self.calls += 1
    return [list(b) for b in self.boxes_by_value.get(int(rgb[0, 0, 0]), [])]


def _marked(value: int, h: int = H, w: int = W) -> np.ndarray:
  frame = np.full((h, w, 3), 100, np.uint8)
  frame[0, 0] = value
  return frame


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
  ys, xs = np.nonzero(mask)
  return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


# --- method, density, reading ------------------------------------------------------


def test_method_parse_shapes_and_information_density():
  assert pp.Method.parse(" M2") is pp.Method.M2
  assert pp.Method.parse(pp.Method.M1) is pp.Method.M1
  with pytest.raises(ValueError, match="m1, m2"):
    pp.Method.parse("m3")
  assert pp.IMAGE_SHAPE == {pp.Method.M1: (384, 384, 3), pp.Method.M2: (224, 224, 1)}
  assert pp.information_density("m1") == 384 * 384 * 3 == 442_368
  assert pp.information_density(pp.Method.M2) == 224 * 224 == 50_176


def test_read_frame_converts_and_names_bad_files(tmp_path):
  gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
  Image.fromarray(gray).save(tmp_path / "gray.jpg", quality=100)
  rgb = pp.read_frame(tmp_path / "gray.jpg")
  assert rgb.shape == (12, 10, 3) and rgb.dtype == np.uint8
  assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
  rgba = np.zeros((4, 5, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 255
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  out = pp.read_frame(tmp_path / "rgba.png")
  assert out.shape == (4, 5, 3) and (out == [200, 0, 0]).all()

  with pytest.raises(Casme2Error, match="missing.jpg"):
    pp.read_frame(tmp_path / "missing.jpg")
  (tmp_path / "junk.jpg").write_bytes(b"not a jpeg at all")
  with pytest.raises(Casme2Error, match="junk.jpg"):
    pp.read_frame(tmp_path / "junk.jpg")
  Image.fromarray(_face()).save(tmp_path / "whole.jpg")
  data = (tmp_path / "whole.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
  with pytest.raises(Casme2Error, match="cut.jpg"):
    pp.read_frame(tmp_path / "cut.jpg")


# --- geometry ----------------------------------------------------------------------


def test_m1_centre_crop_geometry():
  frame = np.zeros((H, W, 3), np.uint8)
  frame[:, :80] = (0, 255, 0)        # left of the 480x480 centre square: cropped away
  frame[:, 560:] = (0, 255, 0)       # right of it
  frame[200:240, 300:340] = (255, 0, 0)
  out = pp.centre_crop(frame)
  assert out.shape == (384, 384, 3) and out.dtype == np.uint8
  # Square x 300..340 -> 220..260 in the crop (left = 80), y unchanged; x 384/480 = 0.8.
  assert _bbox(out[..., 0] > 127) == (176, 160, 208, 192)
  assert out[..., 1].max() == 0     # nothing of the bands outside the square
  assert out[176, 192, 0] >= 250


def test_m2_face_crop_geometry_and_gray():
  frame = np.zeros((H, W, 3), np.uint8)
  colour = (200, 100, 50)
  frame[200:240, 300:340] = colour
  out = pp.face_crop(frame, (200, 100, 400, 300))
  assert out.shape == (224, 224, 1) and out.dtype == np.uint8
  # Box + 20 px = (180, 80, 420, 320), 240 px -> 224: x (300-180)*224/240 = 112 .. 149.3.
  left, top, right, bottom = _bbox(out[..., 0] > 64)
  assert (left, top) == (112, 112) and right in (149, 150) and bottom in (149, 150)
  luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
  assert abs(int(out[130, 130, 0]) - luma) <= 1


def test_margin_clipped_at_borders_and_equal_to_pil_crop():
  assert pp.expand_box((5, 10, 100, 120), H, W) == (0, 0, 120, 140)
  assert pp.expand_box((600, 400, 650, 490), H, W) == (580, 380, 640, 480)
  assert pp.expand_box((100.4, 99.6, 200.5, 300), H, W, margin=0) == (100, 100, 200, 300)
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  got = pp.face_crop(frame, (-30, 400, 90, 520))
  # Independent path: PIL crops the clipped region (0, 380, 110, 480), grays, resizes.
  want = Image.fromarray(frame).crop((0, 380, 110, 480)).convert("L").resize(
      (224, 224), Image.BICUBIC)
  np.testing.assert_array_equal(got[..., 0], np.asarray(want))
  with pytest.raises(ValueError, match="outside"):
    pp.face_crop(frame, (700, 10, 800, 100))


def test_grayscale_is_itu_r_601_luma():
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  want = rgb.astype(float) @ [0.299, 0.587, 0.114]
  got = pp.to_gray(rgb)[..., 0].astype(float)
  assert np.abs(got - want).max() <= 1.0   # PIL's fixed-point rounding
  assert np.abs(got - want).mean() < 0.5


def test_fallback_crop_is_centre_square_in_m2_format():
  rng = np.random.default_rng(2)
  frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  want = Image.fromarray(frame[:, 80:560]).convert("L").resize((224, 224), Image.BICUBIC)
  np.testing.assert_array_equal(pp.fallback_crop(frame)[..., 0], np.asarray(want))


# --- dlib --------------------------------------------------------------------------


def test_dlib_finds_the_astronaut_and_m2_crop_contains_her_face(tmp_path):
  frame = _frame()
  frame[:, 64:576] = skimage.data.astronaut()[:480]
  # Brows, eyes, mouth corners and chin in the 512x512 image (the landmarks that
  # mer_jax.data.synthetic located by eye), shifted onto the canvas.
  landmarks = np.array([(200, 92), (248, 93), (203, 102), (247, 103), (205, 143), (243, 143),
                        (225, 168)]) + [64, 0]
  faces = pp.FaceDetector()(frame)
  assert faces, "dlib found no face in skimage's astronaut"
  video = _video(tmp_path, {1: frame})
  (image,), report = pp.preprocess_video(video, [1], "m2")
  chosen = pp.choose_faces({1: faces})[1]
  cx, cy = landmarks.mean(axis=0)
  assert chosen[0] < cx < chosen[2] and chosen[1] < cy < chosen[3]
  left, top, right, bottom = pp.expand_box(chosen, H, W)
  assert (landmarks > [left, top]).all() and (landmarks < [right, bottom]).all()
  np.testing.assert_array_equal(image, pp.face_crop(frame, chosen))
  assert report.detected == 1 and report.centred == 1 and not report.fallback


def test_half_size_detection_maps_back_to_full_size_boxes():
  frame = _frame([(_face(2.0), 150, 60)])
  half = pp.FaceDetector(scales=(0.5,))(frame)
  full = pp.FaceDetector(scales=(1.0,))(frame)
  assert len(half) == 1 and len(full) == 1
  assert pp._iou(half[0], full[0]) > 0.6
  # The patch's face (hand-located, face patch coordinates x 50..120, y 55..145) x2.
  cx, cy = (half[0][0] + half[0][2]) / 2, (half[0][1] + half[0][3]) / 2
  assert abs(cx - (150 + 85 * 2)) < 25 and abs(cy - (60 + 100 * 2)) < 35


def test_several_faces_rule_on_hand_made_boxes():
  face = [100, 100, 300, 300, 1.0]
  stray = [350, 50, 620, 400, 1.5]    # larger and higher-scoring, in one frame only
  shifted = [110, 100, 310, 300, 0.9]
  dets = {1: [face], 2: [face, [400, 300, 480, 380, 0.2]], 3: [stray, shifted], 4: [face],
          5: [[500, 0, 560, 60, 0.5]]}
  chosen = pp.choose_faces(dets)
  assert chosen[1] == face and chosen[2] == face and chosen[4] == face
  assert chosen[3] == shifted          # the video's face, not the frame's best box
  assert chosen[5] is None             # nothing overlaps the video's face
  boxes = pp.borrow_nearest(chosen)
  assert boxes[5] == (face, 4)
  assert pp.borrow_nearest({1: face, 2: None, 3: shifted})[2] == (face, 1)  # tie: earlier
  assert pp.choose_faces({1: [], 2: []}) == {1: None, 2: None}
  # In one frame, the higher score wins over the larger box (a HOG false positive).
  suit = [80, 250, 300, 470, 0.03]
  assert pp.choose_faces({1: [suit, face]})[1] == face


def test_two_real_faces_the_video_keeps_one(tmp_path):
  big, small = _face(1.8), _face(1.6)
  frames = {n: _frame([(big, 5 + n, 20), (small, 635 - small.shape[1], 60)]) for n in (1, 2, 3)}
  video = _video(tmp_path, frames)
  detector = pp.FaceDetector()
  images, report = pp.preprocess_video(video, [1, 2, 3], "m2", detector=detector)
  dets = {n: detector(rgb) for n, rgb in frames.items()}
  assert all(len(d) == 2 for d in dets.values())
  chosen = pp.choose_faces(dets)
  centres = [(b[0] + b[2]) / 2 for b in chosen.values()]
  assert max(centres) - min(centres) < 40     # the same face in every frame
  for n, image in zip((1, 2, 3), images):
    np.testing.assert_array_equal(image, pp.face_crop(frames[n], chosen[n]))
  assert report.borrowed == [] and report.centred == 3


def test_no_face_frame_borrows_nearest_detection(tmp_path):
  face = _face(2.0)
  frames = {1: _frame([(face, 100, 40)]), 2: _frame([(face, 110, 40)]), 3: _frame(),
            4: _frame([(face, 150, 40)])}
  video = _video(tmp_path, frames)
  images, report = pp.preprocess_video(video, [3, 1], "m2")
  box2 = pp.choose_faces({n: pp.FaceDetector()(frames[n]) for n in (1, 2, 4)})[2]
  # Without context, frame 3's nearest is frame 1; with frames 2 and 4 (tie), frame 2.
  assert report.borrowed == [(3, 1)]
  images, report = pp.preprocess_video(video, [3], "m2", context_frames=[1, 2, 4])
  assert report.borrowed == [(3, 2)] and report.centred == 0 and report.frames == 1
  np.testing.assert_array_equal(images[0], pp.face_crop(frames[3], box2))


def test_no_face_video_falls_back_to_centre_crop_and_is_reported(tmp_path):
  rng = np.random.default_rng(3)
  frames = {n: rng.integers(90, 110, (H, W, 3), dtype=np.uint8) for n in (5, 6)}
  video = _video(tmp_path, frames, "EP09_09")
  run = pp.preprocess_videos([(video, [5, 6])], "m2", cache_dir="", workers=1)
  out = list(run)
  assert [(v.video_id, n) for v, n, _ in out] == [("sub01/EP09_09", 5), ("sub01/EP09_09", 6)]
  for (_, n, image) in out:
    np.testing.assert_array_equal(image, pp.fallback_crop(frames[n]))
  assert run.report.fallback_videos == ["sub01/EP09_09"]
  assert run.report.face_centring_rate == 0.0 and run.report.borrowed == []


# --- phase independence, steady box, centring --------------------------------------------


def test_context_makes_the_apex_crop_independent_of_the_phase(tmp_path):
  face, stray = [200, 100, 400, 300, 1.0], [380, 150, 620, 420, 2.0]
  detector = StubDetector({1: [face], 2: [face], 3: [face, stray], 4: [face]})
  video = _video(tmp_path, {n: _marked(n) for n in (1, 2, 3, 4)})
  alone, _ = pp.preprocess_video(video, [3], "m2", detector=detector)
  af, _ = pp.preprocess_video(video, [3], "m2", context_frames=[1, 2, 3, 4], detector=detector)
  mfs, _ = pp.preprocess_video(video, [1, 2, 3, 4], "m2", detector=detector)
  frame = _marked(3)
  np.testing.assert_array_equal(alone[0], pp.face_crop(frame, stray))  # no context: stray wins
  np.testing.assert_array_equal(af[0], mfs[2])
  np.testing.assert_array_equal(af[0], pp.face_crop(frame, face))


def test_steady_box_uses_the_median_box_everywhere(tmp_path):
  boxes = {1: [200, 100, 380, 280, 1.0], 2: [190, 90, 406, 306, 1.0], 3: [200, 100, 380, 280, 1.0]}
  detector = StubDetector({n: [b] for n, b in boxes.items()})
  video = _video(tmp_path, {n: _marked(n) for n in (1, 2, 3, 4)})
  images, report = pp.preprocess_video(video, [1, 2, 3, 4], "m2", detector=detector,
                                       steady_box=True)
  median = [200, 100, 380, 280]
  for n, image in zip((1, 2, 3, 4), images):
    np.testing.assert_array_equal(image, pp.face_crop(_marked(n), median))
  assert report.borrowed == [(4, None)]
  assert report.box_size_ratio == pytest.approx(216 / 180)


def test_centring_by_hand():
  # Face centred in the crop: centred; it covers 100*100 of the 140*140 crop.
  assert pp.centring([100, 100, 200, 200], (80, 80, 220, 220), 224) == (True, 10000 / 19600)
  # Centre 9 % of the side right of the middle: centred; 11 %: not; 8 % right and
  # 8 % down is 11.3 % away (Euclidean): not.
  assert pp.centring([109, 100, 209, 200], (100, 100, 200, 200), 224)[0]
  assert not pp.centring([108, 108, 208, 208], (100, 100, 200, 200), 224)[0]
  assert not pp.centring([111, 100, 211, 200], (100, 100, 200, 200), 224)[0]
  assert pp.centring(None, (0, 0, 10, 10), 224) == (False, 0.0)


def test_face_centring_rate_on_constructed_videos(tmp_path):
  centred = [270, 190, 370, 290, 1.0]   # frame centre (320, 240)
  right = [500, 100, 600, 200, 1.0]     # inside M1's square, far from its centre
  edge = [0, 200, 60, 260, 1.0]         # M2 crop clipped at the left border
  detector = StubDetector({1: [centred], 2: [right], 3: [edge], 4: [centred]})
  items = [(_video(tmp_path, {1: _marked(1)}, "A"), [1]),
           (_video(tmp_path, {2: _marked(2)}, "B"), [2]),
           (_video(tmp_path, {3: _marked(3)}, "C"), [3]),
           (_video(tmp_path, {4: _marked(4), 5: _marked(5)}, "D"), [4, 5])]
  rates = {}
  for method in ("m1", "m2"):
    report = pp.PreprocessReport(method)
    for video, frames in items:
      report.add(pp.preprocess_video(video, frames, method, detector=detector)[1])
    rates[method] = report
  # M1: A and D's frame 4 centred (B's centre maps 0.51 of the side off, C's is outside).
  assert rates["m1"].face_centring_rate == pytest.approx(2 / 5)
  # M2: A, B and D4 centred; C's clipped crop (0,180)-(80,280) puts it 0.125 off; D5 borrowed.
  assert rates["m2"].face_centring_rate == pytest.approx(3 / 5)
  assert rates["m2"].borrowed == ["sub01/D: frame 5 <- frame 4"]
  m2_cover = (3 * 100 * 100 / (140 * 140) + 60 * 60 / (80 * 100)) / 5
  assert rates["m2"].face_coverage == pytest.approx(m2_cover)
  m1_cover = (2 * 100 * 100 + 60 * 100) / (480 * 480) / 5   # B half in, C outside the square
  assert rates["m1"].face_coverage == pytest.approx(m1_cover)
  d = rates["m2"].as_dict()
  assert d["information_density"] == 50_176 and d["image_shape"] == [224, 224, 1]
  json.dumps(d)


# --- cache, errors, workers ----------------------------------------------------------------


def _three_videos(tmp_path):
  face = _face(2.0)
  out = []
  for k in range(3):
    frames = {n: _frame([(face, 100 + 20 * k + n, 40)]) for n in (1, 2, 3)}
    out.append((_video(tmp_path, frames, f"EP0{k}_01"), [3, 1]))
  return out


_NEW_PROCESS = """
import json, pathlib, sys
import numpy as np
from mer_jax.data import preprocess as pp
from mer_jax.data.casme2 import Video

class NoDetector:
  key = pp.FaceDetector().key
  def __call__(self, rgb):
    raise AssertionError("detector called despite the cache")

a = json.loads(sys.argv[1])
frames = {int(n): pathlib.Path(p) for n, p in a["frames"].items()}
video = Video("sub01", "EP00_01", 1, 2, 3, "others", frames)
images, report = pp.preprocess_video(video, [3, 1], "m2", context_frames=[1, 2, 3],
                                     cache=pp.DetectionCache(a["cache"]), detector=NoDetector())
np.save(a["out"], np.stack(images))
print(report.cached)
"""


def test_cache_is_hit_on_the_second_run_and_survives_a_new_process(tmp_path, monkeypatch):
  items = _three_videos(tmp_path)
  cache = tmp_path / "cache"
  calls = []
  real_call = pp.FaceDetector.__call__
  monkeypatch.setattr(pp.FaceDetector, "__call__",
                      lambda self, rgb: calls.append(1) or real_call(self, rgb))
  context = {v.video_id: [1, 2, 3] for v, _ in items}
  first = pp.preprocess_videos(items, "m2", context=context, cache_dir=cache, workers=1)
  images = [im for *_, im in first]
  assert len(calls) == 9 and first.report.detected == 9 and first.report.cached == 0
  second = pp.preprocess_videos(items, "m2", context=context, cache_dir=cache, workers=1)
  again = [im for *_, im in second]
  assert len(calls) == 9 and second.report.cached == 9 and second.report.detected == 0
  for a, b in zip(images, again):
    np.testing.assert_array_equal(a, b)
  assert len(list(cache.glob("*/*.json"))) == 9

  # A new Python process, whose detector must not be called.
  video = items[0][0]
  args = json.dumps({"frames": {n: str(p) for n, p in video.frames.items()},
                     "cache": str(cache), "out": str(tmp_path / "sub.npy")})
  out = subprocess.run([sys.executable, "-c", _NEW_PROCESS, args], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == "3"
  np.testing.assert_array_equal(np.load(tmp_path / "sub.npy"), np.stack(images[:2]))

  # An edited frame is detected again.
  Image.fromarray(_frame([(_face(2.0), 300, 40)])).save(video.frames[2])
  third = pp.preprocess_videos(items[:1], "m2", context=context, cache_dir=cache, workers=1)
  list(third)
  assert third.report.detected == 1 and third.report.cached == 2


def test_cache_writes_are_atomic_under_concurrency(tmp_path):
  frame = tmp_path / "img1.png"
  Image.fromarray(_marked(1, 8, 8)).save(frame)
  cache = pp.DetectionCache(tmp_path / "cache")
  cache.put(frame, "k", [[0, 0, 1, 1, 0.5]])
  file = next((tmp_path / "cache").glob("*/*.json"))
  errors = []

  def write(i):
    for j in range(100):
      cache.put(frame, "k", [[i, j, i + 1, j + 1, 0.5]] * 50)

  def read():
    for _ in range(300):
      try:
        json.loads(file.read_text())
      except ValueError as e:
        errors.append(e)

  threads = [threading.Thread(target=write, args=(i,)) for i in range(3)]
  threads.append(threading.Thread(target=read))
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert errors == []
  assert len(cache.get(frame, "k")) == 50 and cache.get(frame, "other key") is None
  assert not list((tmp_path / "cache").glob("*/.tmp-*"))


def test_unreadable_or_missing_frame_names_file_and_video(tmp_path):
  (video, _), *_ = _three_videos(tmp_path)
  video.frames[2].write_bytes(b"\xff\xd8 broken")
  with pytest.raises(Casme2Error, match=r"sub01/EP00_01.*img2\.png"):
    list(pp.preprocess_videos([(video, [1, 2])], "m1", cache_dir="", workers=1))
  run = pp.preprocess_videos([(video, [1, 2, 3])], "m2", cache_dir="", workers=1,
                             skip_unreadable=True)
  assert [n for _, n, _ in run] == [1, 3]
  assert len(run.report.skipped) == 1 and "img2.png" in run.report.skipped[0]
  assert run.report.skipped[0].startswith("sub01/EP00_01")
  # An unreadable context-only frame is dropped from the context, not fatal.
  images, report = pp.preprocess_video(video, [1], "m2", context_frames=[1, 2, 3])
  assert len(images) == 1 and report.context_unreadable and report.skipped == []
  with pytest.raises(Casme2Error, match=r"sub01/EP00_01.*img7\.jpg.*missing"):
    pp.preprocess_video(video, [7], "m1")


def test_two_workers_give_the_same_output_as_one(tmp_path):
  items = _three_videos(tmp_path)
  items[1] = (items[1][0], [2, 3, 1])
  context = lambda v: [1, 2, 3]   # a function works too: it is resolved before spawning
  runs = {}
  for workers in (1, 2):
    run = pp.preprocess_videos(items, "m2", context=context, workers=workers,
                               cache_dir=tmp_path / f"cache{workers}")
    runs[workers] = (list(run), run.report)
  (out1, rep1), (out2, rep2) = runs[1], runs[2]
  order = [(v.video_id, n) for v, n, _ in out1]
  assert order == [(v.video_id, n) for v, n, _ in out2]
  assert order[:5] == [("sub01/EP00_01", 3), ("sub01/EP00_01", 1), ("sub01/EP01_01", 2),
                       ("sub01/EP01_01", 3), ("sub01/EP01_01", 1)]
  for (_, _, a), (_, _, b) in zip(out1, out2):
    np.testing.assert_array_equal(a, b)
  assert rep2.detected == rep1.detected == 9
  assert rep2.face_centring_rate == rep1.face_centring_rate == 1.0
  assert runs[2][1].videos == 3


def test_synthetic_casme2_end_to_end(tmp_path):
  """Through casme2 + phases as the builder calls it: faceless frames and videos reported."""
  from mer_jax.data.casme2 import load_casme2
  from mer_jax.data.phases import Phase, select_frames
  from mer_jax.data.synthetic import write_synthetic_casme2
  root = write_synthetic_casme2(tmp_path / "casme2", videos=2, subjects=1, quirks=False,
                                faceless_frames=1, faceless_videos=1, workers=1)
  videos = load_casme2(root).videos
  faceless_video = next(v for v in videos if v.episode.startswith("EP01"))
  other = next(v for v in videos if v is not faceless_video)
  mfs = lambda v: select_frames(v, Phase.MFS)
  cache = tmp_path / "cache"
  reports = {}
  for phase in (Phase.MFS, Phase.AF):
    run = pp.preprocess_videos([(v, select_frames(v, phase)) for v in videos], "m2",
                               context=mfs, cache_dir=cache, workers=1)
    reports[phase] = (run.report, {(v.video_id, n): im for v, n, im in run})
  mfs_report, mfs_images = reports[Phase.MFS]
  af_report, af_images = reports[Phase.AF]
  assert mfs_report.fallback_videos == [faceless_video.video_id]
  assert mfs_report.borrowed == [f"{other.video_id}: frame {other.onset + 1} <- "
                                 f"frame {other.onset}"]
  assert af_report.detected == 0 and af_report.cached == mfs_report.detected
  for key, image in af_images.items():
    np.testing.assert_array_equal(image, mfs_images[key])
  own = mfs_report.frames - len(mfs(faceless_video)) - 1
  assert mfs_report.face_centring_rate == pytest.approx(own / mfs_report.frames)
