"""The crop x colour x size factorial: corners' names and pixels, the 2^3 effects against a
hand computation, their paired intervals against a brute-force loop, and the report."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from mer_jax import metrics, study
from mer_jax.analysis import factorial as fx
from mer_jax.analysis.figures import factorial_figure
from mer_jax.analysis.runs import gather, summarise_cells
from mer_jax.plumbing.errors import UsageError
from mer_jax.data import dataset_configs, preprocess as pp
from mer_jax.data.phases import Phase
from frames_helpers import StubDetector, face_patch, make_frame, make_video
from test_study import _fake_run, _noisy, _test_set
from tiny import E2E_MODEL


def test_corner_names_and_config_names_round_trip():
  assert pp.Method.corner("frame", "rgb", 384) is pp.Method.M1
  assert pp.Method.corner("face", "gray", 224) is pp.Method.M2
  assert pp.Method.corner("aligned", "gray", 224) is pp.Method.M2A
  corners = {(m.crop, m.colour, m.size) for m in pp.Method if not m.is_flow}
  assert len(corners) == 12 == len(pp.Method) - 1      # every corner once; M3 apart
  assert pp.Method.parse("face_rgb_384").image_shape == (384, 384, 3)
  for name in ("m1_af", "m2_mfs", "m2a_kfs", "m3_af"):  # the existing configs keep their names
    assert name in dataset_configs.CONFIG_NAMES
  for name in dataset_configs.CONFIG_NAMES:
    assert dataset_configs.config_name(*dataset_configs.parse_config_name(name)) == name
  assert dataset_configs.parse_config_name("frame_gray_224_kfs") == (
      pp.Method.FRAME_GRAY_224, Phase.KFS)
  assert len(dataset_configs.parse_configs("all")) == 12
  assert [m.value for m in fx.CUBE] == [  # standard order, crop fastest; M2 first, M1 last
      "m2", "frame_gray_224", "face_rgb_224", "frame_rgb_224", "face_gray_384",
      "frame_gray_384", "face_rgb_384", "m1"]


def test_corners_pixels_equal_the_independent_crops(tmp_path):
  """Every frame and face corner on a synthetic face frame equals its crop written
  directly with OpenCV (frames: area average) and PIL (faces: bicubic, luma "L")."""
  rgb = make_frame([(face_patch(1.3), 200, 90)], background=128)
  video = make_video(tmp_path, {1: rgb, 2: rgb})
  box = (210, 100, 420, 330)
  detector = StubDetector({128: [box]})
  square = rgb[:, 80:560]                                  # 640x480 -> its centre 480 square
  face = Image.fromarray(rgb).crop((190, 80, 440, 350))    # box + 20 px
  for m in pp.Method:
    if m.is_flow or m.aligns:
      continue
    (image,), report = pp.preprocess_video(video, [2], m, detector=detector)
    s, gray = m.size, m.colour is pp.Colour.GRAY
    if m.crop is pp.Crop.FRAME:
      src = np.asarray(Image.fromarray(square).convert("L")) if gray else square
      want = cv2.resize(src, (s, s), interpolation=cv2.INTER_AREA)
    else:
      want = np.asarray((face.convert("L") if gray else face).resize(
          (s, s), Image.Resampling.BICUBIC))
    want = want.reshape(s, s, -1)
    assert image.shape == m.image_shape, m
    np.testing.assert_array_equal(image, want, err_msg=m.value)


def test_aligned_rgb_corner_is_the_gray_corners_warp_per_channel():
  rgb = make_frame([(face_patch(1.3), 200, 90)])
  matrix = np.array([[1.0, 0.2, -150.0], [-0.2, 1.0, -40.0]])  # no shrink: no pre-resize
  out = pp.aligned_crop(rgb, matrix, 384, gray=False)
  for c in range(3):
    want = cv2.warpAffine(rgb[..., c].copy(), matrix, (384, 384), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    np.testing.assert_array_equal(out[..., c], want)


# --- the effects ----------------------------------------------------------------


def _hand_effects(y: dict) -> dict:
  """The 2^3 effects written out from their definitions, y[(crop, colour, size)] with
  levels +1 = M1's (frame, rgb, 384), -1 = M2's."""
  mean = lambda cond: np.mean([v for k, v in y.items() if cond(*k)])
  main = lambda i: mean(lambda *k: k[i] > 0) - mean(lambda *k: k[i] < 0)

  def effect_of(i, fixed):           # factor i's effect at the other factors' fixed levels
    def at(level):
      return np.mean([v for k, v in y.items() if k[i] == level and
                      all(k[j] == lv for j, lv in fixed.items())])
    return at(1) - at(-1)

  def two_way(i, j):                 # half the difference of i's effect at j = +1 and -1
    other = 3 - i - j
    return np.mean([(effect_of(i, {j: 1, other: c}) - effect_of(i, {j: -1, other: c})) / 2
                    for c in (1, -1)])

  def three_way():                   # half the difference of crop x colour at size +1, -1
    ab = lambda c: (effect_of(0, {1: 1, 2: c}) - effect_of(0, {1: -1, 2: c})) / 2
    return (ab(1) - ab(-1)) / 2
  return {"crop": main(0), "colour": main(1), "size": main(2),
          "crop × colour": two_way(0, 1), "crop × size": two_way(0, 2),
          "colour × size": two_way(1, 2), "crop × colour × size": three_way()}


def test_effects_equal_the_hand_computation():
  rng = np.random.default_rng(1)
  values = rng.uniform(0.1, 0.9, 8)
  y = {tuple(int(s) for s in signs): v for signs, v in zip(fx.SIGNS, values)}
  got = dict(zip(fx.EFFECTS, fx.effects(values)))
  hand = _hand_effects(y)
  assert got == pytest.approx(hand, abs=1e-12)
  # M1 - M2 = the three main effects + the three-way (the two-way terms cancel)
  assert values[-1] - values[0] == pytest.approx(
      hand["crop"] + hand["colour"] + hand["size"] + hand["crop × colour × size"])


def _f1(y, p):
  """Macro-F1 over the classes of y, from its definition (2 TP / (true + predicted))."""
  return np.mean([2 * np.sum((y == c) & (p == c)) / (np.sum(y == c) + np.sum(p == c))
                  for c in np.unique(y)])


def _units(y, ids, preds):
  return {(0, s): {"video_ids": ids, "y": y, "pred": p, "subjects": ids,
                   "macro_f1": metrics.macro_f1(y, p, 7)} for s, p in enumerate(preds)}


def test_intervals_equal_a_brute_force_loop_over_resamples():
  """Two seeds per cell: each resample draws the videos within class (the same for all
  eight cells) and each cell's seeds; the effects' intervals and p-values equal a loop."""
  ids, y, rng = _test_set()
  order = np.argsort(ids)
  ids, y = ids[order], y[order]
  preds = [[_noisy(y, rng, a) for a in (acc, acc - 0.1)]
           for acc in np.linspace(0.45, 0.9, 8)]                     # [8 cells][2 seeds]
  cube = [{"units": _units(y, ids, p), "loso": False} for p in preds]
  b, seed = 200, 4
  got = fx.cube_effects(cube, n_resamples=b, seed=seed)
  draw = np.random.default_rng(seed)
  seeds = np.random.default_rng((seed, 1))
  members = {c: np.flatnonzero(y == c) for c in np.unique(y)}
  eff_b = []
  for _ in range(b):
    u = draw.integers(0, [len(members[c]) for c in y])
    idx = np.array([members[c][k] for c, k in zip(y, u)])
    pick = seeds.integers(0, 2, (8, 2))
    cells = [np.mean([_f1(y[idx], preds[c][s][idx]) for s in pick[c]]) for c in range(8)]
    hand = _hand_effects({tuple(int(x) for x in sg): v for sg, v in zip(fx.SIGNS, cells)})
    eff_b.append([hand[e] for e in fx.EFFECTS])
  eff_b = np.array(eff_b)
  point = [np.mean([_f1(y, p) for p in cell]) for cell in preds]
  p_values = []
  for j, row in enumerate(got["effects"]):
    lo, hi = np.percentile(eff_b[:, j], [2.5, 97.5])
    assert row["ci"] == pytest.approx([lo, hi], abs=1e-12)
    r = min(b, 2 * min(np.sum(eff_b[:, j] <= 0), np.sum(eff_b[:, j] >= 0)))
    p_values.append((r + 1) / (b + 1))
    assert row["p_value"] == pytest.approx(p_values[-1])
    assert row["estimate"] == pytest.approx(
        _hand_effects({tuple(int(x) for x in sg): v for sg, v in zip(fx.SIGNS, point)})[
            row["effect"]])
  m = len(p_values)                   # Holm by hand: step-down over the seven
  order = np.argsort(p_values)
  holm = np.empty(m)
  holm[order] = np.minimum(1, np.maximum.accumulate(
      [(m - i) * p_values[k] for i, k in enumerate(order)]))
  assert [r["p_holm"] for r in got["effects"]] == pytest.approx(holm.tolist())
  assert got["seeds"] == [0, 1] and got["n_videos"] == len(ids)


def test_the_factorial_section_of_hand_written_runs(tmp_path):
  """A cube of hand-written runs (no training), read back from their files: the section's
  and the JSON's effects are the runs' (rows shuffled, matched by video id); the test
  videos are said to be the same in all eight cells; a missing corner is named."""
  ids, y, rng = _test_set()
  for m, acc in zip(fx.CUBE, np.linspace(0.4, 0.9, 8)):
    _fake_run(tmp_path, "poolformer_s12", m.value, "mfs", y, _noisy(y, rng, acc), ids,
              val=0.5, shuffle=rng)
  for m in fx.CUBE[:3]:                      # a second model's cube lacks five corners
    _fake_run(tmp_path, "poolformer_s24", m.value, "mfs", y, y, ids, val=0.5)
  result = fx.factorial(summarise_cells(gather(tmp_path), 50), n_resamples=500)
  part = "\n".join(fx.section(result))
  assert "the same in all eight cells" in part and "one seed" in part
  assert "Incomplete cube poolformer_s24 MFS" in part and "frame_rgb_224" in part
  factorial_figure(tmp_path, result["cubes"])
  assert (tmp_path / "fig_factorial.png").exists()
  cube = json.loads(json.dumps(fx.as_json(result)))["cubes"]["poolformer_s12_mfs"]
  f1 = {c["method"]: c["macro_f1"] for c in cube["cells"]}
  hand = _hand_effects({tuple(int(x) for x in sg): f1[m.value]
                        for sg, m in zip(fx.SIGNS, fx.CUBE)})
  for e in cube["effects"]:
    assert e["estimate"] == pytest.approx(hand[e["effect"]])
    assert e["ci"][0] <= e["estimate"] <= e["ci"][1]
    assert f"| {e['effect']} |" in part


def test_factorial_refuses_methods(tmp_path, capsys):
  with pytest.raises(UsageError, match="drop --methods"):
    study.main(["--workdir", str(tmp_path), "--factorial", "--methods", "m1"])


@pytest.mark.slow
def test_factorial_study_end_to_end(casme2_small, tmp_path):
  """One command trains the cube on the synthetic set and reports its effects (in
  report.md, with the figure, and study.json)."""
  from e2e import study_args
  assert study.main(["--workdir", str(tmp_path), "--factorial", "--models", E2E_MODEL,
                     "--phases", "af"] + study_args(casme2_small) + ["--set", "num_epochs=1"]) == 0
  got = json.loads((tmp_path / "study.json").read_text())["factorial"]["cubes"]
  assert list(got) == [f"{E2E_MODEL}_af"] and len(got[f"{E2E_MODEL}_af"]["effects"]) == 7
  assert "## Crop × colour × size: the factorial" in (tmp_path / "report.md").read_text()
  assert (tmp_path / "fig_factorial.png").exists()
