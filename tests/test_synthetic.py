"""The synthetic CASME II: layout, sheet, class counts, determinism, detectable faces, local motion."""
import collections

import numpy as np
import pytest
from PIL import Image

from mer_jax.data import casme2, synthetic


@pytest.fixture(scope="module")
def tree(synthetic_casme2):
  """conftest's synthetic CASME II: 16 videos, 4 subjects, seed 3, xlsx and csv sheets."""
  return synthetic_casme2


def test_default_size_and_scaled_class_counts():
  vs = synthetic.plan(255, 26)
  assert len(vs) == 255 and len({v.subject.number for v in vs}) == 26
  assert collections.Counter(v.emotion for v in vs) == synthetic.REAL_COUNTS
  for n in (7, 14, 40, 100):
    c = synthetic.class_counts(n)
    assert sum(c.values()) == n and min(c.values()) >= 1


def test_layout_sheet_and_reader(tree):
  assert (tree / "CASME2-coding-20190701.xlsx").exists()
  assert (tree / "CASME2_RAW_selected" / "sub01" / "Desktop - Shortcut.lnk").exists()
  for sheet in ("CASME2-coding-20190701.xlsx", "CASME2-coding-20190701.csv"):
    index = casme2.load_casme2(tree, tree / sheet)
    assert len(index.videos) == 16
    notes = "\n".join(index.notes)
    assert "'/'" in notes and "apex == onset" in notes and "Desktop - Shortcut.lnk" in notes
    for v in index.videos:
      assert min(v.frames) > 1 and min(v.frames) < v.onset and max(v.frames) > v.offset
      img = Image.open(v.frames[v.apex])
      assert img.size == (640, 480) and img.mode == "RGB"


def test_deterministic(tmp_path):
  a = synthetic.plan(14, 4, seed=5)
  assert a == synthetic.plan(14, 4, seed=5) and a != synthetic.plan(14, 4, seed=6)
  v = a[0]
  np.testing.assert_array_equal(synthetic.render_frame(v, v.apex), synthetic.render_frame(v, v.apex))


def test_dlib_finds_the_face(tree):
  import dlib
  det = dlib.get_frontal_face_detector()
  index = casme2.load_casme2(tree)
  found = 0
  for v in index.videos:
    img = np.asarray(Image.open(v.frames[v.apex]).convert("RGB").resize((320, 240)))
    found += len(det(img, 1)) == 1
  assert found == len(index.videos)


def test_faceless_frame_has_no_face(tree):
  import dlib
  v = [v for v in synthetic.plan(16, 4, seed=3, faceless_frames=1) if v.faceless][0]
  img = synthetic.render_frame(v, v.faceless[0])
  assert len(dlib.get_frontal_face_detector()(img, 0)) == 0


@pytest.mark.parametrize("emotion, region", [("happiness", "corner_l"), ("surprise", "brow_l"),
                                             ("sadness", "brow_in_l"), ("disgust", "lip_up")])
def test_motion_is_local_and_class_specific(emotion, region):
  v = next(v for v in synthetic.plan(60, 6, seed=1) if v.emotion == emotion and not v.subject.flip)
  diff = np.abs(synthetic.render_frame(v, v.apex).astype(float)
                - synthetic.render_frame(v, v.onset).astype(float)).mean(-1)
  s = v.subject
  l, t, r, b = synthetic.PATCH_BOX
  # Landmark in frame coordinates (no flip; tilt of a few degrees moves it by a few px).
  lx, ly = synthetic.LANDMARKS[region]
  x = s.cx + (lx - (r - l) / 2) * s.scale
  y = s.cy + (ly - (b - t) / 2) * s.scale
  near = diff[int(y) - 25:int(y) + 25, int(x) - 25:int(x) + 25].mean()
  far = diff[:60, :].mean()  # background: sensor noise only
  assert near > 4 * far
  assert synthetic.intensity_at(v, v.onset) == 0 and synthetic.intensity_at(v, v.apex) == 1
