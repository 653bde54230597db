"""M1/M2/M2A/M3 preprocessing: geometry by hand, per-video steps, quality figures, errors,
workers, and the synthetic set's class-specific motion in M3's flow."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from frames_helpers import (H, W, StubDetector, face_patch, make_frame, make_video, marked,
                            three_videos)
from mer_jax.data.phases import Phase, select_frames
from mer_jax.data import pixels
from mer_jax.data import preprocess as pp
from mer_jax.data import align, casme2, faces, flow, runner, synthetic, videos
from mer_jax.data.casme2 import Casme2Error


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
  ys, xs = np.nonzero(mask)
  return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


# --- method, density, reading ------------------------------------------------------


def test_method_parse_and_information_density():
  assert pp.Method.parse(" M2") is pp.Method.M2
  assert pp.Method.parse(pp.Method.M1) is pp.Method.M1
  assert pp.Method.parse("M2A") is pp.Method.M2A
  with pytest.raises(ValueError, match="m1, m2, m2a, m3"):
    pp.Method.parse("m4")
  # The paper's Table I, and beyond it M2A (gray) and M3 (u, v, magnitude).
  assert pp.information_density("m1") == 442_368
  assert pp.information_density(pp.Method.M2) == 50_176
  assert pp.information_density("m2a") == 50_176
  assert pp.information_density("m3") == 150_528
  assert [m for m in pp.Method if m.aligns] == [pp.Method.M2A, pp.Method.M3,
                                                pp.Method.ALIGNED_RGB_224,
                                                pp.Method.ALIGNED_RGB_384,
                                                pp.Method.ALIGNED_GRAY_384]


def test_read_frame_converts_and_names_bad_files(tmp_path):
  gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
  Image.fromarray(gray).save(tmp_path / "gray.jpg", quality=100)
  rgb = pixels.read_frame(tmp_path / "gray.jpg")
  assert rgb.shape == (12, 10, 3) and rgb.dtype == np.uint8
  assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
  rgba = np.zeros((4, 5, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 255
  Image.fromarray(rgba).save(tmp_path / "rgba.png")
  out = pixels.read_frame(tmp_path / "rgba.png")
  assert out.shape == (4, 5, 3) and (out == [200, 0, 0]).all()

  with pytest.raises(Casme2Error, match="missing.jpg"):
    pixels.read_frame(tmp_path / "missing.jpg")
  (tmp_path / "junk.jpg").write_bytes(b"not a jpeg at all")
  with pytest.raises(Casme2Error, match="junk.jpg"):
    pixels.read_frame(tmp_path / "junk.jpg")
  Image.fromarray(face_patch()).save(tmp_path / "whole.jpg")
  data = (tmp_path / "whole.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
  with pytest.raises(Casme2Error, match="cut.jpg"):
    pixels.read_frame(tmp_path / "cut.jpg")


# --- geometry ----------------------------------------------------------------------


def test_m1_centre_crop_geometry():
  frame = np.zeros((H, W, 3), np.uint8)
  frame[:, :80] = (0, 255, 0)        # left of the 480x480 centre square: cropped away
  frame[:, 560:] = (0, 255, 0)       # right of it
  frame[200:240, 300:340] = (255, 0, 0)
  out = pixels.centre_crop(frame)
  assert out.shape == (384, 384, 3) and out.dtype == np.uint8
  # Square x 300..340 -> 220..260 in the crop (left = 80), y unchanged; x 384/480 = 0.8.
  assert _bbox(out[..., 0] > 127) == (176, 160, 208, 192)
  assert out[..., 1].max() == 0     # nothing of the bands outside the square
  assert out[176, 192, 0] >= 250


def test_m2_face_crop_geometry_and_gray():
  frame = np.zeros((H, W, 3), np.uint8)
  colour = (200, 100, 50)
  frame[200:240, 300:340] = colour
  out = pixels.face_crop(frame, (200, 100, 400, 300))
  assert out.shape == (224, 224, 1) and out.dtype == np.uint8
  # Box + 20 px = (180, 80, 420, 320), 240 px -> 224: x (300-180)*224/240 = 112 .. 149.3.
  left, top, right, bottom = _bbox(out[..., 0] > 64)
  assert (left, top) == (112, 112) and right in (149, 150) and bottom in (149, 150)
  luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
  assert abs(int(out[130, 130, 0]) - luma) <= 1


def test_margin_clipped_at_borders_and_equal_to_pil_crop():
  assert pixels.expand_box((5, 10, 100, 120), H, W) == (0, 0, 120, 140)
  assert pixels.expand_box((600, 400, 650, 490), H, W) == (580, 380, 640, 480)
  assert pixels.expand_box((100.4, 99.6, 200.5, 300), H, W, margin=0) == (100, 100, 200, 300)
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  got = pixels.face_crop(frame, (-30, 400, 90, 520))
  # Independent path: PIL crops the clipped region (0, 380, 110, 480), grays, resizes.
  want = Image.fromarray(frame).crop((0, 380, 110, 480)).convert("L").resize(
      (224, 224), Image.BICUBIC)
  np.testing.assert_array_equal(got[..., 0], np.asarray(want))
  with pytest.raises(ValueError, match="outside"):
    pixels.face_crop(frame, (700, 10, 800, 100))


def test_grayscale_is_itu_r_601_luma():
  rng = np.random.default_rng(1)
  rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  want = rgb.astype(float) @ [0.299, 0.587, 0.114]
  got = pixels.to_gray(rgb)[..., 0].astype(float)
  assert np.abs(got - want).max() <= 1.0   # PIL's fixed-point rounding
  assert np.abs(got - want).mean() < 0.5


def test_fallback_crop_is_centre_square_in_m2_format():
  rng = np.random.default_rng(2)
  frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
  want = Image.fromarray(frame[:, 80:560]).convert("L").resize((224, 224), Image.BICUBIC)
  np.testing.assert_array_equal(pixels.fallback_crop(frame)[..., 0], np.asarray(want))


# --- one video ---------------------------------------------------------------------


def test_no_face_video_falls_back_to_centre_crop_and_is_reported(tmp_path):
  rng = np.random.default_rng(3)
  frames = {n: rng.integers(90, 110, (H, W, 3), dtype=np.uint8) for n in (5, 6)}
  video = make_video(tmp_path, frames, "EP09_09")
  run = runner.preprocess_videos([(video, [5, 6])], pp.Method.M2, cache_dir="", workers=1)
  out = list(run)
  assert [(v.video_id, n) for v, n, _ in out] == [("sub01/EP09_09", 5), ("sub01/EP09_09", 6)]
  for (_, n, image) in out:
    np.testing.assert_array_equal(image, pixels.fallback_crop(frames[n]))
  assert run.report.fallback_videos == ["sub01/EP09_09"]
  assert run.report.face_centring_rate == 0.0 and run.report.borrowed == []


# --- phase independence, centring --------------------------------------------


def test_context_makes_the_apex_crop_independent_of_the_phase(tmp_path):
  box, stray = [200, 100, 400, 300, 1.0], [380, 150, 620, 420, 2.0]
  detector = StubDetector({1: [box], 2: [box], 3: [box, stray], 4: [box]})
  video = make_video(tmp_path, {n: marked(n) for n in (1, 2, 3, 4)})
  alone, _ = pp.preprocess_video(video, [3], pp.Method.M2, detector=detector)
  af, _ = pp.preprocess_video(video, [3], pp.Method.M2, context_frames=[1, 2, 3, 4],
                              detector=detector)
  mfs, _ = pp.preprocess_video(video, [1, 2, 3, 4], pp.Method.M2, detector=detector)
  frame = marked(3)
  np.testing.assert_array_equal(alone[0], pixels.face_crop(frame, stray))  # no context: stray wins
  np.testing.assert_array_equal(af[0], mfs[2])
  np.testing.assert_array_equal(af[0], pixels.face_crop(frame, box))


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
  items = [(make_video(tmp_path, {1: marked(1)}, "A"), [1]),
           (make_video(tmp_path, {2: marked(2)}, "B"), [2]),
           (make_video(tmp_path, {3: marked(3)}, "C"), [3]),
           (make_video(tmp_path, {4: marked(4), 5: marked(5)}, "D"), [4, 5])]
  rates = {}
  for method in (pp.Method.M1, pp.Method.M2):
    report = pp.PreprocessReport(method.value)
    for video, frames in items:
      report.add(pp.preprocess_video(video, frames, method, detector=detector)[1])
    rates[method] = report
  # M1: A and D's frame 4 centred (B's centre maps 0.51 of the side off, C's is outside).
  assert rates[pp.Method.M1].face_centring_rate == pytest.approx(2 / 5)
  # M2: A, B and D4 centred; C's clipped crop (0,180)-(80,280) puts it 0.125 off; D5 borrowed.
  assert rates[pp.Method.M2].face_centring_rate == pytest.approx(3 / 5)
  assert rates[pp.Method.M2].borrowed == ["sub01/D: frame 5 <- frame 4"]
  m2_cover = (3 * 100 * 100 / (140 * 140) + 60 * 60 / (80 * 100)) / 5
  assert rates[pp.Method.M2].face_coverage == pytest.approx(m2_cover)
  m1_cover = (2 * 100 * 100 + 60 * 100) / (480 * 480) / 5   # B half in, C outside the square
  assert rates[pp.Method.M1].face_coverage == pytest.approx(m1_cover)
  d = rates[pp.Method.M2].as_dict()
  assert d["information_density"] == 50_176 and d["image_shape"] == [224, 224, 1]
  json.dumps(d)


# --- errors, workers ----------------------------------------------------------------


def test_unreadable_or_missing_frame_names_file_and_video(tmp_path):
  (video, _), *_ = three_videos(tmp_path)
  video.frames[2].write_bytes(b"\xff\xd8 broken")
  with pytest.raises(Casme2Error, match=r"sub01/EP00_01.*img2\.png"):
    list(runner.preprocess_videos([(video, [1, 2])], pp.Method.M1, cache_dir="", workers=1))
  run = runner.preprocess_videos([(video, [1, 2, 3])], pp.Method.M2, cache_dir="", workers=1,
                                skip_unreadable=True)
  assert [n for _, n, _ in run] == [1, 3]
  assert len(run.report.skipped) == 1 and "img2.png" in run.report.skipped[0]
  assert run.report.skipped[0].startswith("sub01/EP00_01")
  # An unreadable context-only frame is dropped from the context, not fatal.
  images, report = pp.preprocess_video(video, [1], pp.Method.M2, context_frames=[1, 2, 3])
  assert len(images) == 1 and report.context_unreadable and report.skipped == []
  with pytest.raises(Casme2Error, match=r"sub01/EP00_01.*img7\.jpg.*missing"):
    pp.preprocess_video(video, [7], pp.Method.M1)


def test_two_workers_give_the_same_output_as_one(tmp_path):
  items = three_videos(tmp_path)
  items[1] = (items[1][0], [2, 3, 1])
  context = lambda v: [1, 2, 3]   # a function works too: it is resolved before spawning
  runs = {}
  for workers in (1, 2):
    run = runner.preprocess_videos(items, pp.Method.M2, context=context, workers=workers,
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


def test_shared_workers_reuse_one_pool_and_encode_png_in_the_workers(tmp_path):
  import io
  items = three_videos(tmp_path)
  want = [im for _, _, im in runner.preprocess_videos(items, pp.Method.M2, workers=1,
                                                      cache_dir=tmp_path / "cache")]
  main_spec = __import__("__main__").__spec__
  pools = []
  with runner.shared_workers():
    got = []
    for part in (items[:2], items[1:]):   # two calls of 2 videos, as a build's splits
      run = runner.preprocess_videos(part, pp.Method.M2, workers=2, encode=True,
                                     cache_dir=tmp_path / "cache")
      got += [png for _, _, png in run]
      pools += list(runner._SHARED_POOLS.values())
  assert len(pools) == 2 and pools[0] is pools[1]   # started once, used twice
  assert runner._SHARED_POOLS is None and pools[0]._shutdown_thread
  assert __import__("__main__").__spec__ is main_spec   # restored after the workers started
  want = want[:4] + want[2:]
  assert len(got) == len(want) and all(isinstance(b, bytes) for b in got)
  for png, image in zip(got, want):
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png)))[..., None], image)


def test_synthetic_casme2_end_to_end(tmp_path):
  """Through casme2 + phases as the builder calls it: faceless frames and videos reported."""
  root = synthetic.write_synthetic_casme2(tmp_path / "casme2", videos=2, subjects=1, quirks=False,
                                faceless_frames=1, faceless_videos=1, workers=1)
  videos = casme2.load_casme2(root).videos
  faceless_video = next(v for v in videos if v.episode.startswith("EP01"))
  other = next(v for v in videos if v is not faceless_video)
  mfs = lambda v: select_frames(v, Phase.MFS)
  cache = tmp_path / "cache"
  reports = {}
  for phase in (Phase.MFS, Phase.AF):
    run = runner.preprocess_videos([(v, select_frames(v, phase)) for v in videos],
                                   pp.Method.M2, context=mfs, cache_dir=cache, workers=1)
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


# --- M2A (aligned) and M3 (flow) ----------------------------------------------------


@pytest.fixture(scope="module")
def dlib_models():
  return faces.FaceDetector(), faces.LandmarkDetector()


def _tilted_face_video(tmp_path, shift: int = 2):
  """Frames 1-3 of a real face tilted 8 degrees; frames 2 and 3 moved `shift` px right."""
  patch = np.asarray(Image.fromarray(face_patch(1.3)).rotate(
      8, resample=Image.BICUBIC, fillcolor=(128, 128, 128)))
  frames = {n: make_frame([(patch, 180 + (shift if n > 1 else 0), 100)]) for n in (1, 2, 3)}
  return make_video(tmp_path, frames, "EP05_01")


def _onset_matrix(video, detector, landmarker):
  found = {n: detector(pixels.read_frame(video.frames[n])) for n in sorted(video.frames)}
  box = faces.video_faces(found).boxes[video.onset][0]
  return align.video_transform(pixels.to_gray(pixels.read_frame(video.frames[video.onset]))[..., 0],
                               box, landmarker)


def test_m2a_warps_every_frame_by_the_onset_faces_transform(tmp_path, dlib_models):
  det, lm = dlib_models
  video = _tilted_face_video(tmp_path)
  images, report = pp.preprocess_video(video, [2, 3], "m2a", detector=det, landmarker=lm)
  m = _onset_matrix(video, det, lm)
  assert abs(abs(np.degrees(np.arctan2(m[1, 0], m[0, 0]))) - 8) < 3  # the tilt is undone
  for n, image in zip((2, 3), images):
    assert image.shape == (224, 224, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, pixels.aligned_crop(pixels.read_frame(video.frames[n]), m))
  assert report.frames == 2 and report.centred == 2  # the box centre lands near the middle
  assert not report.landmark_fallback and not report.fallback


def test_m3_is_the_flow_from_the_onsets_aligned_face(tmp_path, dlib_models):
  det, lm = dlib_models
  video = _tilted_face_video(tmp_path, shift=2)
  frames = pp.phase_frames(video, Phase.KFS, "m3")
  assert [f.frame_index for f in frames] == [2, 3]  # the onset's own flow is zero: left out
  images, report = pp.preprocess_video(video, frames, "m3", detector=det, landmarker=lm)
  aligned, _ = pp.preprocess_video(video, [1, 2, 3], "m2a", detector=det, landmarker=lm)
  for image, face in zip(images, aligned[1:]):
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, flow.flow_image(aligned[0][..., 0], face[..., 0]))
  # The face moved 2 px right in the frame: that displacement through the transform.
  want = _onset_matrix(video, det, lm)[:, :2] @ [2.0, 0.0]
  u, v = flow.decode_flow(images[0])
  assert np.median(u[60:170, 60:170]) == pytest.approx(want[0], abs=0.3)
  assert np.median(v[60:170, 60:170]) == pytest.approx(want[1], abs=0.3)
  assert report.frames == 2 and report.centred == 2


def test_a_face_without_landmarks_falls_back_to_m2_and_is_counted(tmp_path, dlib_models):
  det, _ = dlib_models
  video = _tilted_face_video(tmp_path)
  no_landmarks = lambda gray, box: None  # noqa: E731
  m2, _ = pp.preprocess_video(video, [1, 2], "m2", detector=det, steady_box=True)
  m2a, report = pp.preprocess_video(video, [1, 2], "m2a", detector=det, landmarker=no_landmarks)
  assert report.landmark_fallback and not report.fallback
  for a, b in zip(m2, m2a):
    np.testing.assert_array_equal(a, b)
  total = pp.PreprocessReport("m2a")
  total.add(report)
  assert total.as_dict()["landmark_fallback_videos"] == [video.video_id]
  (m3,), r3 = pp.preprocess_video(video, [2], "m3", detector=det, landmarker=no_landmarks)
  assert r3.landmark_fallback  # and the flow is between M2's crops
  np.testing.assert_array_equal(m3, flow.flow_image(m2[0][..., 0], m2[1][..., 0]))


def test_a_landmark_fallback_crops_one_box_so_a_still_face_has_no_flow(tmp_path):
  """Per-frame boxes that jitter around a still face: the fallback's crops are of one
  box (the video's median box), so its M2A images agree and its M3 flow is zero."""
  patch = face_patch(1.0)
  frames = {}
  for n in (1, 2, 3):
    frames[n] = make_frame([(patch, 220, 140)])
    frames[n][0, 0] = n  # the stub detector's key; outside every crop
  boxes = {1: [(230, 150, 380, 310, 1.0)], 2: [(236, 146, 390, 316, 1.0)],
           3: [(224, 154, 376, 306, 1.0)]}
  video = make_video(tmp_path, frames)
  kw = dict(detector=StubDetector(boxes), landmarker=lambda gray, box: None)
  images, report = pp.preprocess_video(video, [2, 3], "m3", **kw)
  assert report.landmark_fallback and report.frames == 2 and not report.borrowed
  for image in images:
    np.testing.assert_array_equal(image[..., :2], flow.ZERO)
    np.testing.assert_array_equal(image[..., 2], 0)
  faces_, _ = pp.preprocess_video(video, [1, 2, 3], "m2a", **kw)
  median = np.median([b[0] for b in boxes.values()], axis=0)
  for face in faces_:  # each is M2's crop of the median box
    np.testing.assert_array_equal(face, pixels.face_crop(frames[1], median, 224))


def test_m3_needs_its_onset_frame(tmp_path, dlib_models):
  det, lm = dlib_models
  video = _tilted_face_video(tmp_path)
  video.frames[1].write_bytes(b"\xff\xd8 broken")
  with pytest.raises(Casme2Error, match=r"sub01/EP05_01.*img1\.png"):
    pp.preprocess_video(video, [2, 3], "m3", detector=det, landmarker=lm)
  images, report = pp.preprocess_video(video, [2, 3], "m3", detector=det, landmarker=lm,
                                       skip_unreadable=True)
  assert images == [None, None] and report.frames == 0
  assert len(report.skipped) == 3 and "img1.png" in report.skipped[0]
  # M2A uses the onset only for its transform: without it, M2's crops (a landmark fallback).
  images, report = pp.preprocess_video(video, [2, 3], "m2a", detector=det, landmarker=lm)
  assert report.landmark_fallback and report.context_unreadable
  assert all(i is not None and i.shape == (224, 224, 1) for i in images)


def test_flow_phases_leave_out_the_onset():
  files = {n: f"img{n}.jpg" for n in range(10, 31)}
  v = videos.Video("casme2", "sub01", "EP01_01", 10, 20, 30, "others", files)
  for phase in Phase:
    for method in ("m1", "m2", "m2a"):
      assert pp.phase_frames(v, phase, method) == select_frames(v, phase)
  assert [f.frame_index for f in pp.phase_frames(v, "af", "m3")] == [20]
  assert [f.frame_index for f in pp.phase_frames(v, "kfs", "m3")] == [20, 30]
  mfs = [f.frame_index for f in pp.phase_frames(v, "mfs", "m3")]
  assert len(mfs) == 12 and mfs[:3] == [11, 12, 13]  # onset+[0..3] gives 3 flow frames
  still = videos.Video("casme2", "sub01", "EP01_02", 10, 10, 10, "others", files)
  assert [f.frame_index for f in pp.phase_frames(still, "kfs", "m3")] == [10]  # all it has


def test_centring_through_a_transform_equals_the_crop_box_rule():
  s = 224 / 140
  crop = np.array([[s, 0, -80 * s], [0, s, -80 * s]])  # the crop (80, 80, 220, 220) as a matrix
  centred, cover = pp.centring([100, 100, 200, 200], crop, 224)
  assert centred and cover == pytest.approx(10000 / 19600)
  assert pp.centring([109, 100, 209, 200], np.array([[2.24, 0, -224], [0, 2.24, -224]]), 224)[0]
  assert not pp.centring([111, 100, 211, 200],
                         np.array([[2.24, 0, -224], [0, 2.24, -224]]), 224)[0]
  c, sn = np.cos(np.radians(30)), np.sin(np.radians(30))
  turn = np.array([[c, -sn, 112 - 112 * c + 112 * sn], [sn, c, 112 - 112 * sn - 112 * c]])
  turned = turn @ np.vstack([crop, [0, 0, 1]])  # turned about the output centre
  centred, cover = pp.centring([100, 100, 200, 200], turned, 224)
  assert centred and 0.45 < cover <= 10000 / 19600 + 1e-6
  assert pp.centring(None, turned, 224) == (False, 0.0)


@pytest.mark.parametrize("emotion,upper,lower", [("surprise", -1, 1), ("happiness", 0, -1),
                                                 ("sadness", -1, 1)])
def test_synthetic_class_motion_shows_in_m3_flow(tmp_path, dlib_models, emotion, upper, lower):
  """Brows up and jaw down (surprise), mouth corners up (happiness), inner brows up and
  corners down (sadness): the sign of the vertical flow where the face moves, in the
  upper (brows) and lower (mouth, chin) thirds of the aligned face; 0 = nothing moves."""
  det, lm = dlib_models
  v = next(p for p in synthetic.plan(videos=7, subjects=7, seed=0, quirks=False)
           if p.emotion == emotion)
  video = make_video(tmp_path, {n: synthetic.render_frame(v, n) for n in (v.onset, v.apex)})
  (image,), report = pp.preprocess_video(video, pp.phase_frames(video, "af", "m3"), "m3",
                                         detector=det, landmarker=lm)
  assert not report.landmark_fallback
  u, vv = flow.decode_flow(image)
  moving = np.hypot(u, vv) > 2.0
  for band, sign in ((slice(0, 75), upper), (slice(140, 224), lower)):
    strong = vv[band][moving[band]]
    if sign == 0:
      assert strong.size < 0.01 * moving[band].size
    else:
      assert strong.size > 100 and np.sign(np.mean(strong)) == sign and abs(np.mean(strong)) > 1
