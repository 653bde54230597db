r"""CASME II on disk: the coding sheet and the frame folders.

Every quirk of the distributed dataset is handled here, once; the rest of the
system sees only clean `Video` records.

  python -m mer_jax.data.casme2 /path/to/CASME2     # summary of a copy

Layout (as distributed):
  ROOT/CASME2_RAW_selected/subNN/EPxx_yy[f]/img{N}.jpg   N = absolute frame number
  ROOT/CASME2-coding-*.xlsx  (or a CSV export of it)

Quirks handled (each one that occurs is listed in `Casme2Index.notes`):
- columns are found by name (case, spaces, '_' and small variants such as
  "Onset Frame" tolerated), never by position: the 20140508 sheet, the
  20190701 sheet with two blank "Unnamed" columns, "updated" variants, CSV
  exports (',' or ';' separated, UTF-8 or a legacy code page), a title row
  above the header, the table on another worksheet;
- several sheets in ROOT: the newest date in the name wins (see `find_sheet`);
- the frames zip unpacked one level too deep (ROOT/CASME2_RAW_selected/
  CASME2_RAW_selected/subNN) is followed; ROOT pointing at the subject
  folders themselves gets an error saying to pass the parent;
- ApexFrame given as '/' (sub04 EP12_01f): the apex falls back to the middle
  frame of onset..offset, (onset + offset) // 2, and `apex_estimated` is set;
- apex == onset (sub05 EP09_05f) is valid (the MFS windows then overlap);
- emotions in any case or with spaces; names with trailing spaces; Subject as
  1, "01" or "sub01"; Filename vs folder differing in case, whitespace or the
  trailing 'f'; subject folders sub1 vs sub01;
- frame numbers that do not start at 1; extra frames and stray non-image files
  (a `Desktop - Shortcut.lnk` ships inside sub01); key frames without a file
  are noted.
Errors (`Casme2Error`) name the row, column or folder and say what to do.

One file, though long: it is the only place that knows CASME II's quirks, and
reading them together (sheet, folders, frames) is how they are checked.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import logging
import pathlib
import re

from mer_jax.plumbing.errors import UserError

# Label order of the TFDS ClassLabel and of every model head.
EMOTIONS = ("happiness", "disgust", "surprise", "repression", "sadness", "fear", "others")

FRAMES_DIR = "CASME2_RAW_selected"
SHEET_GLOB = "CASME2-coding-*"

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
CASME II is licensed and cannot be downloaded automatically.

1. Request it from its authors, Fu Xiaolan's group at the Institute of
   Psychology, Chinese Academy of Sciences (CASME II page:
   http://casme.psych.ac.cn/casme/e2), by signing their licence agreement.
2. From what they send, two things are needed (the cropped frames and the
   compressed videos are not used):
     - {FRAMES_DIR}.zip: the raw 640x480 frames, unzipped so that
       {FRAMES_DIR}/subNN/EPxx_yy[f]/img<N>.jpg exist (unzipped one level
       deeper, {FRAMES_DIR}/{FRAMES_DIR}/subNN, works too);
     - the coding sheet CASME2-coding-20140508.xlsx (or the 20190701 /
       'updated' version, or a CSV export of it).
   Put both in one directory DIR (the manual dir, e.g. ~/casme2):
     DIR/{FRAMES_DIR}/sub01/EP02_01f/img46.jpg ...
     DIR/CASME2-coding-20140508.xlsx
   Check it with: python -m mer_jax.data.casme2 DIR
3. Pass DIR as the manual dir, e.g.
     python -m mer_jax.data.build --configs m2_mfs --manual_dir DIR
     python -m mer_jax.train --config configs/pool_m36_mfs.py --config.data.manual_dir=DIR
To try everything without CASME II, write the synthetic stand-in:
     python -m mer_jax.data.synthetic --out DIR
"""

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
_FRAME_RE = re.compile(r"^img(\d+)$", re.IGNORECASE)

# Canonical column -> accepted header spellings (compared without case/space/_).
_COLUMNS = {
    "subject": ("subject", "sub"),
    "filename": ("filename", "file", "episode"),
    "onset": ("onsetframe", "onset"),
    "apex": ("apexframe", "apex"),
    "offset": ("offsetframe", "offset"),
    "action_units": ("actionunits", "aus", "au"),
    "emotion": ("estimatedemotion", "emotion"),
}
_REQUIRED = ("subject", "filename", "onset", "apex", "offset", "emotion")
_CANONICAL_HEADER = {"subject": "Subject", "filename": "Filename", "onset": "OnsetFrame",
                     "apex": "ApexFrame", "offset": "OffsetFrame",
                     "action_units": "Action Units", "emotion": "Estimated Emotion"}


class Casme2Error(UserError, ValueError):
  """A problem with the user's CASME II copy; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Video:
  """One coded CASME II sample (a clip of one subject)."""
  subject: str                 # folder name, e.g. "sub01"
  episode: str                 # folder name, e.g. "EP02_01f"
  onset: int                   # absolute frame numbers (the N of imgN.jpg)
  apex: int
  offset: int
  emotion: str                 # one of EMOTIONS
  frames: dict[int, pathlib.Path] = dataclasses.field(repr=False, compare=False)
  action_units: str = ""
  apex_estimated: bool = False  # apex was missing ('/') in the sheet; see fallback

  @property
  def video_id(self) -> str:
    return f"{self.subject}/{self.episode}"

  @property
  def label(self) -> int:
    return EMOTIONS.index(self.emotion)


@dataclasses.dataclass(frozen=True)
class SheetRow:
  """One row of the coding sheet, validated but not yet matched to a folder."""
  row: int                     # 1-based row number in the sheet (header = 1)
  subject: str                 # normalised folder name, "sub01"
  filename: str                # stripped
  onset: int
  apex: int | None             # None where the sheet says '/'
  offset: int
  action_units: str
  emotion: str                 # canonical, one of EMOTIONS


@dataclasses.dataclass
class Casme2Index:
  """A CASME II copy: one `Video` per sheet row, and the quirks met on the way."""
  root: pathlib.Path
  sheet: pathlib.Path
  videos: list[Video]
  notes: list[str]


def _norm_header(h) -> str:
  return re.sub(r"[\s_\-]+", "", str(h if h is not None else "")).lower()


def _sheet_candidates(root: pathlib.Path) -> list[pathlib.Path]:
  """Coding sheets in `root`, best first (see `find_sheet`)."""
  found = [p for p in root.iterdir()
           if p.is_file() and p.suffix.lower() in (".xlsx", ".csv")
           and "coding" in p.name.lower() and not p.name.startswith(("~$", ".~lock"))]

  def rank(p):
    date = max((int(d) for d in re.findall(r"\d{8}", p.name)), default=0)
    return (date, "updated" in p.name.lower(), p.suffix.lower() == ".xlsx", p.name)

  return sorted(found, key=rank, reverse=True)


def find_sheet(root: str | pathlib.Path) -> pathlib.Path:
  """The coding sheet in `root`.

  Several versions circulate (20140508, 20190701, 'updated' copies, CSV
  exports), and later ones fix codings, so the choice is: the newest 8-digit
  date in the file name, then a name containing 'updated', then xlsx over csv
  (the original rather than an export), then the name. Any `*coding*.xlsx` or
  `.csv` in `root` counts; Excel's `~$` lock files do not. Pass `sheet=` to
  `load_casme2` to choose another.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise Casme2Error(f"CASME II directory {root} does not exist.\n\n"
                      + MANUAL_DOWNLOAD_INSTRUCTIONS)
  found = _sheet_candidates(root)
  if not found:
    raise Casme2Error(f"No coding sheet ({SHEET_GLOB}.xlsx or .csv) in {root}.\n\n"
                      + MANUAL_DOWNLOAD_INSTRUCTIONS)
  return found[0]


def _read_csv(path: pathlib.Path, notes: list[str]) -> list[list]:
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError:
    # Excel on a non-UTF-8 Windows locale exports cp1252/GBK; the fields that
    # matter are ASCII, which latin-1 always decodes unchanged.
    text = raw.decode("latin-1")
    notes.append(f"{path.name}: not UTF-8; read as latin-1 (only ASCII fields are used)")
  first = text.splitlines()[0] if text else ""
  # Excel in locales with a decimal comma exports ';'-separated "CSV".
  delimiter = max(",;\t", key=first.count)
  if delimiter != ",":
    notes.append(f"{path.name}: fields separated by {delimiter!r}")
  return [row for row in csv.reader(io.StringIO(text), delimiter=delimiter)]


def _is_header(row: list) -> bool:
  return any(_norm_header(c) in _COLUMNS["filename"] for c in row)


def _has_header(rows: list[list]) -> bool:
  return any(_is_header(r) for r in rows[:20])


def _read_xlsx(path: pathlib.Path, notes: list[str]) -> list[list]:
  import openpyxl
  try:
    # Not read_only: read-only mode trusts the file's stored dimensions, which
    # some writers get wrong (rows then come back cut short). The sheet is small.
    wb = openpyxl.load_workbook(path, data_only=True)
  except Exception as e:  # a corrupt or non-xlsx file
    raise Casme2Error(f"Cannot read the coding sheet {path}: {e}. Re-copy it, or export it "
                      "to CSV and pass that.") from e
  try:
    tables = [(ws.title, [list(r) for r in ws.iter_rows(values_only=True)])
              for ws in wb.worksheets]
  finally:
    wb.close()
  for k, (title, rows) in enumerate(tables):
    if _has_header(rows):
      if k:
        notes.append(f"{path.name}: coding table read from worksheet {title!r}")
      return rows
  return tables[0][1] if tables else []


def _read_table(path: pathlib.Path, notes: list[str]) -> list[list]:
  if not path.is_file():
    raise Casme2Error(f"Coding sheet {path} not found. Pass an existing .xlsx or .csv, or "
                      "leave it out to use the one in the CASME II directory.")
  if path.suffix.lower() == ".csv":
    return _read_csv(path, notes)
  return _read_xlsx(path, notes)


def _header_map(header: list, path: pathlib.Path, notes: list[str]) -> dict[str, int]:
  """Canonical column -> position, found by name (first matching spelling wins)."""
  normed = [_norm_header(h) for h in header]
  cols = {}
  for name, spellings in _COLUMNS.items():
    for s in spellings:
      if s in normed:
        cols[name] = normed.index(s)
        break
  missing = [c for c in _REQUIRED if c not in cols]
  if missing:
    shown = [str(h) for h in header if h not in (None, "")]
    raise Casme2Error(
        f"Coding sheet {path} has no column for {', '.join(missing)}; columns found: "
        f"{shown}. Expected Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, "
        "Action Units, Estimated Emotion (case, spaces and '_' do not matter).")
  unused = [str(h) if h not in (None, "") else f"<blank column {i + 1}>"
            for i, h in enumerate(header) if i not in cols.values()]
  if unused:
    notes.append(f"{path.name}: ignored columns {unused}")
  variants = [str(header[i]) for c, i in cols.items()
              if str(header[i]) != _CANONICAL_HEADER[c]]
  if variants:
    notes.append(f"{path.name}: header variants matched by name: {variants}")
  return cols


def _subject_name(value, where: str) -> str:
  s = str(value if value is not None else "").strip().lower()
  m = re.fullmatch(r"(?:sub)?\s*0*(\d+)(?:\.0+)?", s)
  if not m:
    raise Casme2Error(f"{where}: Subject {value!r} is not a subject number like 1, 01 or sub01.")
  return f"sub{int(m.group(1)):02d}"


def _frame_number(value, column: str, where: str) -> int | None:
  """An int frame number, or None for '/' and blanks (the sheet's "unknown")."""
  s = str(value).strip() if value is not None else ""
  if s in ("/", "", "-", "nan", "None"):
    return None
  try:
    f = float(s)
  except ValueError:
    f = float("nan")
  if f != f or f != int(f) or f < 0:
    raise Casme2Error(f"{where}: {column} {value!r} is not a frame number.")
  return int(f)


_EMOTION_ALIASES = {"happy": "happiness", "surprised": "surprise", "sad": "sadness",
                    "disgusted": "disgust", "other": "others", "repressed": "repression",
                    "fearful": "fear"}


def _emotion(value, where: str) -> str:
  e = re.sub(r"\s+", " ", str(value if value is not None else "")).strip().lower()
  e = _EMOTION_ALIASES.get(e, e)
  if e not in EMOTIONS:
    raise Casme2Error(f"{where}: unknown emotion {value!r}; valid: {', '.join(EMOTIONS)} "
                      "(any case). Fix the cell or drop the row.")
  return e


def _examples(pairs: list[tuple], k: int = 3) -> str:
  shown = ", ".join(f"{a!r} -> {b!r}" for a, b in pairs[:k])
  return shown + (f", ... ({len(pairs)} in all)" if len(pairs) > k else "")


def read_coding_sheet(path: str | pathlib.Path,
                      notes: list[str] | None = None) -> list[SheetRow]:
  """The sheet's rows, validated and normalised; blank rows are skipped.

  The quirks met while reading are appended to `notes` when given.
  """
  path = pathlib.Path(path).expanduser()
  notes = notes if notes is not None else []
  table = _read_table(path, notes)
  header_at = next((i for i, r in enumerate(table) if _is_header(r)), None)
  if header_at is None:
    raise Casme2Error(f"Coding sheet {path} has no header row with a 'Filename' column; "
                      "is it the CASME II coding sheet?")
  if header_at:
    notes.append(f"{path.name}: header found on row {header_at + 1}")
  cols = _header_map(table[header_at], path, notes)
  rows, renamed_emotions, renamed_files, blank = [], [], [], 0
  for i, r in enumerate(table[header_at + 1:], start=header_at + 2):
    cell = lambda c: r[cols[c]] if c in cols and cols[c] < len(r) else None
    if all(v is None or str(v).strip() == "" for v in r):
      blank += 1
      continue
    where = f"{path.name} row {i}"
    filename = str(cell("filename") if cell("filename") is not None else "").strip()
    if not filename:
      raise Casme2Error(f"{where}: Filename is empty; fill it in or delete the row.")
    onset = _frame_number(cell("onset"), "OnsetFrame", where)
    apex = _frame_number(cell("apex"), "ApexFrame", where)
    offset = _frame_number(cell("offset"), "OffsetFrame", where)
    if onset is None or offset is None:
      raise Casme2Error(f"{where}: OnsetFrame and OffsetFrame must be frame numbers "
                        f"(got {cell('onset')!r}, {cell('offset')!r}).")
    if onset > offset:
      raise Casme2Error(f"{where}: OnsetFrame {onset} is after OffsetFrame {offset}.")
    if apex is not None and not onset <= apex <= offset:
      raise Casme2Error(f"{where}: ApexFrame {apex} is outside onset..offset "
                        f"({onset}..{offset}).")
    emotion = _emotion(cell("emotion"), where)
    if str(cell("emotion")) != emotion:
      renamed_emotions.append((cell("emotion"), emotion))
    if str(cell("filename")) != filename:
      renamed_files.append((cell("filename"), filename))
    aus = cell("action_units")
    rows.append(SheetRow(
        row=i, subject=_subject_name(cell("subject"), where), filename=filename,
        onset=onset, apex=apex, offset=offset,
        action_units=str(aus if aus is not None else "").strip(), emotion=emotion))
  if not rows:
    raise Casme2Error(f"Coding sheet {path} has a header but no rows.")
  if renamed_emotions:
    notes.append(f"{path.name}: emotion labels normalised: {_examples(renamed_emotions)}")
  if renamed_files:
    notes.append(f"{path.name}: spaces stripped from Filename: {_examples(renamed_files)}")
  if blank:
    notes.append(f"{path.name}: skipped {blank} blank rows")
  return rows


def _scan_frames(folder: pathlib.Path) -> tuple[dict[int, pathlib.Path], list[str]]:
  frames, stray = {}, []
  for p in sorted(folder.iterdir()):
    m = _FRAME_RE.match(p.stem)
    if not (p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES and m):
      stray.append(p.name)
      continue
    n = int(m.group(1))
    if n in frames:
      raise Casme2Error(f"{folder}: {frames[n].name} and {p.name} are both frame {n}; "
                        "keep one.")
    frames[n] = p
  return dict(sorted(frames.items())), stray


def _subject_key(name: str) -> str:
  m = re.fullmatch(r"sub\s*0*(\d+)", name.strip().lower())
  return f"sub{int(m.group(1)):02d}" if m else name.strip().lower()


def _find_dir(parent: pathlib.Path, name: str, what: str, where: str) -> pathlib.Path:
  """`parent/name`, tolerating case, spaces, sub1 vs sub01 and EP.._.. vs EP.._..f."""
  exact = parent / name
  if exact.is_dir():
    return exact
  dirs = [p for p in parent.iterdir() if p.is_dir()]
  if what == "subject":
    matches = [p for p in dirs if _subject_key(p.name) == _subject_key(name)]
  else:
    key = name.strip().lower()
    matches = [p for p in dirs if p.name.strip().lower() == key]
    if not matches:  # the sheet and the folders disagree on the trailing 'f'
      matches = [p for p in dirs if p.name.strip().lower().rstrip("f") == key.rstrip("f")]
  if len(matches) == 1:
    return matches[0]
  raise Casme2Error(f"{where}: {what} folder {exact} not found"
                    + (f" (ambiguous: {sorted(m.name for m in matches)})" if matches else "")
                    + ". Check that the frames are laid out as DIR/"
                    f"{FRAMES_DIR}/subNN/EPxx_yy/imgN.jpg, or fix the sheet's row.")


def _has_subject_dirs(d: pathlib.Path) -> bool:
  return any(p.is_dir() and re.fullmatch(r"sub\s*\d+", p.name.strip().lower())
             for p in d.iterdir())


def _frames_root(root: pathlib.Path, notes: list[str]) -> pathlib.Path:
  """ROOT/CASME2_RAW_selected, also where unzipping nested it one level deeper."""
  frames_root = root / FRAMES_DIR
  nested = frames_root / FRAMES_DIR
  if frames_root.is_dir() and nested.is_dir() and not _has_subject_dirs(frames_root):
    notes.append(f"frames found one level deeper, in {nested}")
    return nested
  if frames_root.is_dir():
    return frames_root
  if root.is_dir() and _has_subject_dirs(root):
    raise Casme2Error(f"{root} holds the subject folders itself; pass its parent, the "
                      f"directory that holds {FRAMES_DIR}/ and the coding sheet.")
  raise Casme2Error(f"{frames_root} not found.\n\n" + MANUAL_DOWNLOAD_INSTRUCTIONS)


def load_casme2(root: str | pathlib.Path,
                sheet: str | pathlib.Path | None = None) -> Casme2Index:
  """All coded videos of a CASME II copy, in sheet order, with the quirks met in `notes`.

  Apex fallback: where the sheet's ApexFrame is '/', the apex is the middle
  frame of onset..offset, (onset + offset) // 2, and `apex_estimated` is set,
  so every phase (all of which need an apex) can use the video.
  """
  root = pathlib.Path(root).expanduser()
  notes: list[str] = []
  frames_root = _frames_root(root, notes)
  if sheet is None:
    sheet = find_sheet(root)
    others = [p.name for p in _sheet_candidates(root)[1:]]
    if others:
      notes.append(f"several coding sheets; using {sheet.name} (newest date, then "
                   f"'updated', then xlsx), not {others}")
  sheet = pathlib.Path(sheet).expanduser()
  videos, seen, stray_reported = [], {}, set()
  late_start, outside = 0, 0
  for r in read_coding_sheet(sheet, notes):
    where = f"{sheet.name} row {r.row} ({r.subject} {r.filename})"
    subject_dir = _find_dir(frames_root, r.subject, "subject", where)
    video_dir = _find_dir(subject_dir, r.filename, "video", where)
    if video_dir.name != r.filename:
      notes.append(f"{where}: sheet name {r.filename!r} matched folder {video_dir.name!r}")
    frames, stray = _scan_frames(video_dir)
    if stray and video_dir not in stray_reported:
      stray_reported.add(video_dir)
      notes.append(f"{subject_dir.name}/{video_dir.name}: ignored non-frame files {stray}")
    if not frames:
      raise Casme2Error(f"{where}: no imgN.jpg frames in {video_dir}.")
    apex, estimated = r.apex, False
    if apex is None:
      apex, estimated = (r.onset + r.offset) // 2, True
      notes.append(f"{where}: ApexFrame missing ('/'); using the middle frame {apex} of "
                   f"{r.onset}..{r.offset}")
    if apex == r.onset:
      notes.append(f"{where}: apex == onset ({apex}); MFS windows overlap")
    absent = [n for n in sorted({r.onset, apex, r.offset}) if n not in frames]
    if absent:
      notes.append(f"{where}: key frames {absent} have no image file "
                   f"(folder holds {min(frames)}..{max(frames)})")
    late_start += min(frames) > 1
    outside += min(frames) < r.onset or max(frames) > r.offset
    video = Video(subject=subject_dir.name, episode=video_dir.name, onset=r.onset, apex=apex,
                  offset=r.offset, emotion=r.emotion, frames=frames,
                  action_units=r.action_units, apex_estimated=estimated)
    if video.video_id in seen:
      raise Casme2Error(f"{where}: video {video.video_id} is coded twice (also row "
                        f"{seen[video.video_id]}); delete one of the rows.")
    seen[video.video_id] = r.row
    videos.append(video)
  if late_start:
    notes.append(f"{late_start} videos: frame numbers start above 1 (absolute numbers kept)")
  if outside:
    notes.append(f"{outside} videos: frames before onset or after offset (kept in `frames`, "
                 "used by no phase)")
  # Subject-level stray files (e.g. sub01's 'Desktop - Shortcut.lnk').
  for d in sorted(frames_root.iterdir()):
    if d.is_dir():
      stray = sorted(p.name for p in d.iterdir() if p.is_file())
      if stray:
        notes.append(f"{d.name}: ignored stray files {stray}")
  for n in notes:
    logging.info("CASME II: %s", n)
  return Casme2Index(root=root, sheet=sheet, videos=videos, notes=notes)


def summary(index: Casme2Index) -> str:
  """What a user checks before a long build: the counts match the paper's, the quirks are known."""
  by_emotion = collections.Counter(v.emotion for v in index.videos)
  subjects = collections.Counter(v.subject for v in index.videos)
  lines = [f"{len(index.videos)} videos of {len(subjects)} subjects (sheet {index.sheet.name})",
           "per emotion: " + ", ".join(f"{e} {by_emotion[e]}" for e in EMOTIONS),
           "per subject: " + ", ".join(f"{s} {n}" for s, n in sorted(subjects.items()))]
  if index.notes:
    lines += ["notes:"] + [f"  {n}" for n in index.notes]
  return "\n".join(lines)


def main(argv=None) -> int:
  from mer_jax.plumbing import cli  # here, not above: the library itself needs no CLI dependencies
  p = cli.parser("mer_jax.data.casme2", __doc__)
  p.add_argument("root", help="directory holding CASME2_RAW_selected/ and the coding sheet")
  p.add_argument("--sheet", help="coding sheet to use (default: found in root)")
  args = cli.parse(p, argv)
  print(summary(load_casme2(args.root, args.sheet)))
  return 0


if __name__ == "__main__":
  from mer_jax.plumbing import cli
  cli.run(main)
