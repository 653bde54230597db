"""Frame selection of AF, KFS and MFS, hand-checked against the paper's windows."""
import numpy as np
import pytest

from mer_jax.data.videos import Video
from mer_jax.data.phases import ROLES, Phase, PhaseFrame, select_frames


def video(onset, apex, offset, frames=None):
  frames = frames if frames is not None else range(onset - 5, offset + 6)
  return Video("casme2", "sub01", "EP01_01", onset, apex, offset, "others",
               {n: f"img{n}.jpg" for n in frames})


def idx(sel):
  return [f.frame_index for f in sel]


def test_af_is_the_apex():
  assert select_frames(video(46, 59, 86), Phase.AF) == (PhaseFrame(59, "apex"),)


def test_kfs_is_onset_apex_offset():
  assert select_frames(video(46, 59, 86), "kfs") == (
      PhaseFrame(46, "onset"), PhaseFrame(59, "apex"), PhaseFrame(86, "offset"))


def test_mfs_non_overlapping_has_13_frames():
  sel = select_frames(video(46, 59, 86), Phase.MFS)
  assert idx(sel) == [46, 47, 48, 49, 57, 58, 59, 60, 61, 83, 84, 85, 86]
  roles = {f.frame_index: f.role for f in sel}
  assert (roles[46], roles[59], roles[86]) == ("onset", "apex", "offset")
  assert sum(r == "window" for r in roles.values()) == 10


def test_apex_equal_onset_overlaps_without_duplicates():
  sel = select_frames(video(30, 30, 50), Phase.MFS)
  # onset+[0..3] = 30..33, apex[-2..2] clipped to 30..32, offset[-3..0] = 47..50
  assert idx(sel) == [30, 31, 32, 33, 47, 48, 49, 50]
  assert sel[0] == PhaseFrame(30, "apex")
  assert idx(select_frames(video(30, 30, 50), Phase.KFS)) == [30, 50]


def test_short_video_clips_to_onset_offset():
  sel = select_frames(video(10, 12, 14), Phase.MFS)
  assert idx(sel) == [10, 11, 12, 13, 14]
  assert all(10 <= i <= 14 for i in idx(sel))


def test_frames_outside_onset_offset_never_used():
  for onset, apex, offset in [(5, 5, 6), (5, 6, 6), (1, 2, 3), (100, 140, 141)]:
    for phase in Phase:
      sel = select_frames(video(onset, apex, offset), phase)
      assert all(onset <= i <= offset for i in idx(sel))


def test_parse_lists_valid_values():
  assert Phase.parse(" MFS ") is Phase.MFS
  with pytest.raises(ValueError, match="af, kfs, mfs"):
    Phase.parse("xfs")


def test_mfs_matches_a_frame_by_frame_definition():
  """An independent reading of the paper: frame n of onset..offset is used iff it lies in
  one of the windows onset..onset+3, apex-2..apex+2, offset-3..offset."""
  rng = np.random.default_rng(0)
  for _ in range(300):
    onset = int(rng.integers(1, 200))
    offset = onset + int(rng.integers(0, 30))
    apex = int(rng.integers(onset, offset + 1))
    expected = [n for n in range(onset, offset + 1)
                if onset <= n <= onset + 3 or apex - 2 <= n <= apex + 2
                or offset - 3 <= n <= offset]
    sel = select_frames(video(onset, apex, offset), Phase.MFS)
    assert idx(sel) == expected
    role = {f.frame_index: f.role for f in sel}
    assert role[apex] == "apex"
    assert role[onset] == ("apex" if onset == apex else "onset")
    assert role[offset] == ("apex" if offset == apex else "onset" if offset == onset else "offset")
    assert all(r == "window" for n, r in role.items() if n not in (onset, apex, offset))
    assert set(role.values()) <= set(ROLES)


def test_touching_windows_and_one_frame_video():
  # apex = onset + 4: the onset window ends at 33, the apex window starts at 32.
  assert idx(select_frames(video(30, 34, 60), Phase.MFS)) == [30, 31, 32, 33, 34, 35, 36,
                                                              57, 58, 59, 60]
  one = video(7, 7, 7)
  for phase in Phase:
    assert select_frames(one, phase) == (PhaseFrame(7, "apex"),)


def test_apex_outside_onset_offset_is_rejected():
  with pytest.raises(ValueError, match="outside onset..offset"):
    select_frames(video(10, 25, 20), Phase.AF)
