r"""SAMM on disk: the FACS coding sheet and the gray frame folders.

  python -m mer_jax.data.summary --dataset samm ~/SAMM     # summary of a copy

Layout (as distributed; ROOT is the directory that holds both):
  ROOT/SAMM/{subject:03d}/{filename}/{subject:03d}_{frame}.jpg   frame: 4 or 5 digits
  ROOT/SAMM_Micro_FACS_Codes_v2.xlsx  (or another dated/versioned name, or a CSV export)

Quirks handled (each one met is listed in `VideoSet.notes`):
- the sheet's table starts below ~13 rows of title and notes: the header is
  found by name, and columns by name (Subject, Filename, Onset Frame, Apex
  Frame, Offset Frame, Action Units, Estimated Emotion; Inducement Code,
  Duration, Micro, Objective Classes and Notes are not needed), in any case
  or spacing; several sheets: newest date, then highest vN, wins;
- frame numbers written with 4 or 5 digits (006_0123.jpg, 006_10123.jpg) are
  read as numbers; two files of one number are an error;
- a missing apex ('-1', '/', blank): the middle frame of onset..offset,
  `apex_rule` "middle";
- Subject as 6, "6" or "006"; emotions in any case ("Other", "Happiness");
  ROOT pointing at SAMM/ itself; stray files.
Frames are gray, 2040x1088 in the original release (videos.GRAY), 200 fps.
All 159 coded movements are read; which count in a protocol is the label
scheme's business (MEGC 2019 drops "Other": mer_jax.data.megc).
"""
from __future__ import annotations

import logging
import pathlib
import re

from mer_jax.data import labels, sheets
from mer_jax.data.videos import Video, VideoSet

FRAMES_DIR = "SAMM"
SHEET_NAME = "SAMM_Micro_FACS_Codes_v2.xlsx"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
SAMM is licensed and cannot be downloaded automatically. Request it from its
authors (Manchester Metropolitan University, Moi Hoon Yap's group:
http://www2.docm.mmu.ac.uk/STAFF/M.Yap/dataset.php) and put, in one directory DIR,
  DIR/{FRAMES_DIR}/006/006_1_2/006_05562.jpg ...   (the frames as unzipped)
  DIR/{SHEET_NAME}                                 (the coding sheet, any version)
Check it with: python -m mer_jax.data.summary --dataset samm DIR
"""

_FRAME_RE = re.compile(r"^\d+_(\d+)$")
_CANONICAL_HEADER = {"subject": "Subject", "filename": "Filename", "onset": "Onset Frame",
                     "apex": "Apex Frame", "offset": "Offset Frame",
                     "action_units": "Action Units", "emotion": "Estimated Emotion"}
_EMOTION_ALIASES = {"happy": "happiness", "sad": "sadness", "angry": "anger",
                    "others": "other", "surprised": "surprise", "disgusted": "disgust",
                    "fearful": "fear", "contemptuous": "contempt"}
_MISSING = sheets.MISSING + ("-1",)  # SAMM writes an unknown apex as -1


class SammError(sheets.DatasetError):
  """A problem with the user's SAMM copy; the message says what to do."""


def _subject(value, where: str) -> str:
  m = re.fullmatch(r"0*(\d+)(?:\.0+)?", sheets.cell_text(value))
  if not m:
    raise SammError(f"{where}: Subject {value!r} is not a subject number like 6 or 006.")
  return f"{int(m.group(1)):03d}"


def _frames_root(root: pathlib.Path, notes: list[str]) -> pathlib.Path:
  if not root.is_dir():
    raise SammError(f"SAMM directory {root} does not exist.\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)
  frames_root = root / FRAMES_DIR
  if frames_root.is_dir():
    return frames_root
  if any(re.fullmatch(r"\d{3}", p.name) for p in sheets.subdirs(root)):
    notes.append(f"{root} holds the subject folders itself; read as the {FRAMES_DIR}/ folder")
    return root
  raise SammError(f"{frames_root} not found.\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)


def find_sheet(root: pathlib.Path, frames_root: pathlib.Path, notes: list[str]) -> pathlib.Path:
  """The coding sheet in ROOT (or beside the subject folders): the newest of several."""
  return sheets.pick_sheet((root, frames_root), ("samm", "facs"), notes,
                           f"No SAMM coding sheet (*SAMM*.xlsx or *FACS*.xlsx/.csv) in {root}."
                           "\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS, SammError)


def _find(parent: pathlib.Path, name: str, what: str, where: str) -> pathlib.Path:
  return sheets.one_dir(sheets.find_dir(parent, name, lambda n: n.strip().lower()),
                        parent / name, what, where,
                        f"DIR/{FRAMES_DIR}/006/006_1_2/006_NNNNN.jpg", SammError)


def load_samm(root: str | pathlib.Path, sheet: str | pathlib.Path | None = None) -> VideoSet:
  """All coded movements of a SAMM copy, in sheet order, with the quirks met in `notes`."""
  root = pathlib.Path(root).expanduser()
  notes: list[str] = []
  frames_root = _frames_root(root, notes)
  sheet = pathlib.Path(sheet).expanduser() if sheet else find_sheet(root, frames_root, notes)
  records = sheets.read_records(sheet, notes, _CANONICAL_HEADER, SammError,
                                "SAMM coding sheet")
  videos, rows, widths = [], [], set()
  for i, cells in records:
    where = f"{sheet.name} row {i}"
    subject = _subject(cells["subject"], where)
    filename = sheets.cell_text(cells["filename"])
    if not filename:
      raise SammError(f"{where}: Filename is empty; fill it in or delete the row.")
    where = f"{where} ({subject} {filename})"
    onset, apex, offset = sheets.key_frames(
        cells, where, SammError, ("Onset Frame", "Apex Frame", "Offset Frame"), _MISSING)
    apex, rule = sheets.apex_or_middle(apex, onset, offset, where, notes, "Apex Frame",
                                       cells["apex"])
    emotion = sheets.native_emotion(cells["emotion"], labels.NATIVE["samm"], _EMOTION_ALIASES,
                                    where, SammError)
    video_dir = _find(_find(frames_root, subject, "subject", where), filename, "video", where)
    frames, stray = sheets.scan_frames(video_dir, _FRAME_RE, SammError)
    if stray:
      notes.append(f"{subject}/{video_dir.name}: ignored non-frame files {stray}")
    if not frames:
      raise SammError(f"{where}: no {subject}_NNNN.jpg frames in {video_dir}.")
    widths |= {len(_FRAME_RE.match(p.stem).group(1)) for p in frames.values()}
    sheets.note_key_frames(frames, onset, apex, offset, where, notes)
    videos.append(Video(dataset="samm", subject=subject, episode=video_dir.name, onset=onset,
                        apex=apex, offset=offset, emotion=emotion, frames=frames,
                        action_units=sheets.cell_text(cells.get("action_units")),
                        apex_rule=rule))
    rows.append(i)
  sheets.check_unique(videos, rows, sheet, SammError)
  if len(widths) > 1:
    notes.append(f"frame numbers written with {sorted(widths)} digits (read as numbers)")
  sheets.note_stray_files(frames_root, notes)
  for n in notes:
    logging.info("SAMM: %s", n)
  return VideoSet(dataset="samm", root=root, sheet=sheet, videos=videos, notes=notes)
