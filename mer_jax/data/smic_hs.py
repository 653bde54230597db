r"""SMIC-HS on disk: labels from folders, no coding sheet, no apex.

  python -m mer_jax.data.summary --dataset smic_hs ~/SMIC/HS [--apex flow]

Layout (ROOT holds the subject folders; ROOT/HS is followed too):
  ROOT/s{N}/micro/{negative|positive|surprise}/{clip}/image{frame}.bmp
  (the cropped release: reg_image{frame}.bmp)

The label is the folder. Onset and offset are the clip's first and last
frames. SMIC codes no apex; `apex` chooses one and each Video records the
rule (`apex_rule`): "middle" (default; (onset + offset) // 2, as most peers)
or "flow" (mer_jax.data.apex: the frame moving most from the onset by DIS
flow; reads every frame, so slower). 640x480 colour at 100 fps.
Quirks handled (each one met is in `VideoSet.notes`): subject folders s1 or
s01 in any case; label folders in any case; non_micro/ and other folders
beside micro/ skipped; image and reg_image naming; stray files.
"""
from __future__ import annotations

import logging
import pathlib
import re

from mer_jax.data import apex as spotting
from mer_jax.data import labels, sheets
from mer_jax.data.videos import Video, VideoSet

APEX_CHOICES = ("middle", "flow")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
SMIC is licensed and cannot be downloaded automatically. Request it from the
University of Oulu (Guoying Zhao's group, https://www.oulu.fi/cmvs/node/41319)
and pass the HS directory DIR, which holds
  DIR/s1/micro/negative/<clip>/image<N>.bmp   (or reg_image<N>.bmp) ...
Check it with: python -m mer_jax.data.summary --dataset smic_hs DIR
"""

_FRAME_RE = re.compile(r"^(?:reg_)?image0*(\d+)$", re.IGNORECASE)
_SUBJECT_RE = re.compile(r"s0*(\d+)", re.IGNORECASE)


class SmicError(sheets.DatasetError):
  """A problem with the user's SMIC-HS copy; the message says what to do."""


def _subject_dirs(root: pathlib.Path, notes: list[str]) -> list[pathlib.Path]:
  if not root.is_dir():
    raise SmicError(f"SMIC-HS directory {root} does not exist.\n\n"
                    + MANUAL_DOWNLOAD_INSTRUCTIONS)
  for d in (root, root / "HS"):
    subjects = [p for p in sheets.subdirs(d) if _SUBJECT_RE.fullmatch(p.name.strip())]
    if subjects:
      if d != root:
        notes.append(f"subject folders read from {d}")
      return sorted(subjects, key=lambda p: int(_SUBJECT_RE.fullmatch(p.name.strip()).group(1)))
  raise SmicError(f"No subject folders (s1, s2, ...) in {root}.\n\n"
                  + MANUAL_DOWNLOAD_INSTRUCTIONS)


def load_smic_hs(root: str | pathlib.Path, apex: str = "middle") -> VideoSet:
  """Every micro clip of a SMIC-HS copy (subject, then label, then clip order)."""
  if apex not in APEX_CHOICES:
    raise SmicError(f"apex={apex!r}: choose one of {', '.join(APEX_CHOICES)}.")
  root = pathlib.Path(root).expanduser()
  notes: list[str] = []
  videos, skipped, naming = [], set(), set()
  for subject_dir in _subject_dirs(root, notes):
    folders = {p.name.strip().lower(): p for p in sheets.subdirs(subject_dir)}
    skipped |= {p.name for k, p in folders.items() if k != "micro"}
    if "micro" not in folders:
      notes.append(f"{subject_dir.name}: no micro/ folder (no micro-expressions)")
      continue
    for label_dir in sheets.subdirs(folders["micro"]):
      emotion = label_dir.name.strip().lower()
      if emotion not in labels.NATIVE["smic_hs"]:
        skipped.add(f"micro/{label_dir.name}")
        continue
      for clip in sheets.subdirs(label_dir):
        where = f"{subject_dir.name}/micro/{label_dir.name}/{clip.name}"
        frames, stray = sheets.scan_frames(clip, _FRAME_RE, SmicError)
        if stray:
          notes.append(f"{where}: ignored non-frame files {stray}")
        if not frames:
          raise SmicError(f"{where}: no image<N>.bmp or reg_image<N>.bmp frames; remove the "
                          "empty folder or restore its frames.")
        naming |= {p.stem.lower().startswith("reg_") for p in frames.values()}
        onset, offset = min(frames), max(frames)
        if apex == "flow":
          peak = spotting.spot_apex(frames, onset, offset)
        else:
          peak = sheets.middle(onset, offset)
        missing = sorted(set(range(onset, offset + 1)) - set(frames))
        if missing:
          notes.append(f"{where}: {len(missing)} frames missing between the first and the "
                       f"last, e.g. {missing[:3]}")
        videos.append(Video(dataset="smic_hs", subject=subject_dir.name, episode=clip.name,
                            onset=onset, apex=peak, offset=offset, emotion=emotion,
                            frames=frames, apex_rule=apex))
  if not videos:
    raise SmicError(f"No micro clips under {root}/s*/micro/{{negative,positive,surprise}}/.\n\n"
                    + MANUAL_DOWNLOAD_INSTRUCTIONS)
  if skipped:
    notes.append(f"skipped folders (not micro-expression clips): {sorted(skipped)}")
  if naming == {True, False}:
    notes.append("frames named both image<N> and reg_image<N> (read alike)")
  rule = "the DIS-flow peak from the onset" if apex == "flow" else "the middle frame"
  notes.append(f"no apex is coded: apex = {rule} of each clip")
  for n in notes:
    logging.info("SMIC-HS: %s", n)
  return VideoSet(dataset="smic_hs", root=root, sheet=None, videos=videos, notes=notes)
