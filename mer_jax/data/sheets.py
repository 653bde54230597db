"""Reading pieces every dataset shares: coding sheets and numbered frame folders.

A dataset module (casme2, samm, casme3, smic_hs) states its quirks -- column
spellings, frame file names, folder layout -- and calls these for the rest:

- `sheet_candidates`: coding sheets in a folder, newest dated name first;
- `read_records`: a sheet's rows (xlsx on any worksheet, or CSV with ',' or
  ';', UTF-8 or a legacy code page) as {column: cell}, the header found by
  name wherever it sits (SAMM has ~13 title rows above it), columns matched
  without case, spaces, '_' or '-';
- `frame_number`, `key_frames`, `native_emotion`: cells validated, with
  errors naming the row;
- `scan_frames`: a folder's numbered frames by a pattern, stray files kept
  apart; `find_dir`: a folder tolerant of case and spaces.
Errors are raised as the caller's error class (a `DatasetError`), so each
message says which dataset and what to do.
"""
from __future__ import annotations

import csv
import io
import pathlib
import re
from typing import Callable, Mapping, Sequence

from mer_jax.plumbing.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
MISSING = ("/", "", "-", "nan", "none")  # cells that mean "not coded"

# The coded columns every sheet has (CASME II, SAMM, CAS(ME)^3) -> accepted
# header spellings, compared after `norm_header` (first present spelling wins).
COLUMNS = {
    "subject": ("subject", "sub"),
    "filename": ("filename", "file", "episode"),
    "onset": ("onsetframe", "onset"),
    "apex": ("apexframe", "apex"),
    "offset": ("offsetframe", "offset"),
    "action_units": ("actionunits", "aus", "au"),
    "emotion": ("estimatedemotion", "emotion"),
}
REQUIRED = ("subject", "filename", "onset", "apex", "offset", "emotion")


class DatasetError(UserError, ValueError):
  """A problem with the user's copy of a dataset; the message says what to do."""


def norm_header(h) -> str:
  return re.sub(r"[\s_\-]+", "", str(h if h is not None else "")).lower()


def sheet_candidates(root: pathlib.Path, contains: Sequence[str]) -> list[pathlib.Path]:
  """xlsx/csv files in `root` whose lower-case name contains one of `contains`, best first.

  Later versions fix codings, so the order is: the newest 8-digit date in the
  name, then a name containing 'updated', then the highest 'vN', then xlsx
  over csv (the original rather than an export), then the name. Excel's `~$`
  and LibreOffice's lock files do not count.
  """
  found = [p for p in root.iterdir()
           if p.is_file() and p.suffix.lower() in (".xlsx", ".csv")
           and any(c in p.name.lower() for c in contains)
           and not p.name.startswith(("~$", ".~lock"))]

  def rank(p):
    date = max((int(d) for d in re.findall(r"\d{8}", p.name)), default=0)
    version = max((int(v) for v in re.findall(r"(?i)v(\d+)", p.stem)), default=0)
    return (date, "updated" in p.name.lower(), version, p.suffix.lower() == ".xlsx", p.name)

  return sorted(found, key=rank, reverse=True)


def _read_csv(path: pathlib.Path, notes: list[str]) -> list[list]:
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError:
    # Excel on a non-UTF-8 Windows locale exports cp1252/GBK; the fields that
    # matter are ASCII, which latin-1 always decodes unchanged.
    text = raw.decode("latin-1")
    notes.append(f"{path.name}: not UTF-8; read as latin-1 (only ASCII fields are used)")
  lines = [l for l in text.splitlines() if l.strip()]
  # Excel in locales with a decimal comma exports ';'-separated "CSV"; the
  # busiest line decides (title rows above a header have few separators).
  sample = max(lines, key=lambda l: max(l.count(c) for c in ",;\t"), default="")
  delimiter = max(",;\t", key=sample.count)
  if delimiter != ",":
    notes.append(f"{path.name}: fields separated by {delimiter!r}")
  return [row for row in csv.reader(io.StringIO(text), delimiter=delimiter)]


def _read_xlsx(path: pathlib.Path, notes: list[str], is_header, error) -> list[list]:
  import openpyxl
  try:
    # Not read_only: read-only mode trusts the file's stored dimensions, which
    # some writers get wrong (rows then come back cut short). Sheets are small.
    wb = openpyxl.load_workbook(path, data_only=True)
  except Exception as e:  # a corrupt or non-xlsx file
    raise error(f"Cannot read the coding sheet {path}: {e}. Re-copy it, or export it "
                "to CSV and pass that.") from e
  try:
    tables = [(ws.title, [list(r) for r in ws.iter_rows(values_only=True)])
              for ws in wb.worksheets]
  finally:
    wb.close()
  for k, (title, rows) in enumerate(tables):
    if any(is_header(r) for r in rows[:40]):
      if k:
        notes.append(f"{path.name}: coding table read from worksheet {title!r}")
      return rows
  return tables[0][1] if tables else []


def read_table(path: pathlib.Path, notes: list[str], is_header: Callable[[list], bool],
               error: type[DatasetError] = DatasetError) -> list[list]:
  """The cells of a coding sheet (.csv, else .xlsx: the worksheet holding the header)."""
  if not path.is_file():
    raise error(f"Coding sheet {path} not found. Pass an existing .xlsx or .csv, or "
                "leave it out to use the one in the dataset directory.")
  if path.suffix.lower() == ".csv":
    return _read_csv(path, notes)
  return _read_xlsx(path, notes, is_header, error)


def header_map(header: list, path: pathlib.Path, notes: list[str],
               columns: Mapping[str, Sequence[str]], required: Sequence[str],
               canonical: Mapping[str, str], error: type[DatasetError]) -> dict[str, int]:
  """Column -> position, found by name (`columns` lists normalised spellings, first wins)."""
  normed = [norm_header(h) for h in header]
  cols = {}
  for name, spellings in columns.items():
    for s in spellings:
      if s in normed:
        cols[name] = normed.index(s)
        break
  missing = [c for c in required if c not in cols]
  if missing:
    shown = [str(h) for h in header if h not in (None, "")]
    raise error(f"Coding sheet {path} has no column for {', '.join(missing)}; columns found: "
                f"{shown}. Expected {', '.join(canonical.values())} (case, spaces and '_' "
                "do not matter).")
  unused = [str(h) if h not in (None, "") else f"<blank column {i + 1}>"
            for i, h in enumerate(header) if i not in cols.values()]
  if unused:
    notes.append(f"{path.name}: ignored columns {unused}")
  variants = [str(header[i]) for c, i in cols.items()
              if c in canonical and str(header[i]) != canonical[c]]
  if variants:
    notes.append(f"{path.name}: header variants matched by name: {variants}")
  return cols


def read_records(path: str | pathlib.Path, notes: list[str], canonical: Mapping[str, str],
                 error: type[DatasetError] = DatasetError, what: str = "coding sheet",
                 columns: Mapping[str, Sequence[str]] = COLUMNS,
                 required: Sequence[str] = REQUIRED) -> list[tuple[int, dict]]:
  """(1-based sheet row, {column: cell}) of each non-blank row below the header.

  The header is the first row holding a "filename" spelling of `columns`
  (title and note rows above it are skipped and noted).
  """
  path = pathlib.Path(path).expanduser()
  is_header = lambda row: any(norm_header(c) in columns["filename"] for c in row)
  table = read_table(path, notes, is_header, error)
  header_at = next((i for i, r in enumerate(table) if is_header(r)), None)
  if header_at is None:
    raise error(f"Coding sheet {path} has no header row with a 'Filename' column; "
                f"is it the {what}?")
  if header_at:
    notes.append(f"{path.name}: header found on row {header_at + 1}")
  cols = header_map(table[header_at], path, notes, columns, required, canonical, error)
  out, blank = [], 0
  for i, r in enumerate(table[header_at + 1:], start=header_at + 2):
    if all(v is None or str(v).strip() == "" for v in r):
      blank += 1
      continue
    out.append((i, {c: (r[k] if k < len(r) else None) for c, k in cols.items()}))
  if not out:
    raise error(f"Coding sheet {path} has a header but no rows.")
  if blank:
    notes.append(f"{path.name}: skipped {blank} blank rows")
  return out


def cell_text(value) -> str:
  return str(value if value is not None else "").strip()


def frame_number(value, column: str, where: str, error: type[DatasetError],
                 missing: Sequence[str] = MISSING) -> int | None:
  """An int frame number, or None for a cell in `missing` (the sheet's "unknown")."""
  s = str(value).strip() if value is not None else ""
  if s.lower() in missing:
    return None
  try:
    f = float(s)
  except ValueError:
    f = float("nan")
  if f != f or f != int(f) or f < 0:
    raise error(f"{where}: {column} {value!r} is not a frame number.")
  return int(f)


def key_frames(cells: Mapping, where: str, error: type[DatasetError],
               names: Sequence[str] = ("OnsetFrame", "ApexFrame", "OffsetFrame"),
               missing: Sequence[str] = MISSING) -> tuple[int, int | None, int]:
  """(onset, apex or None, offset) of a row, checked to be in order."""
  onset = frame_number(cells.get("onset"), names[0], where, error, missing)
  apex = frame_number(cells.get("apex"), names[1], where, error, missing)
  offset = frame_number(cells.get("offset"), names[2], where, error, missing)
  if onset is None or offset is None:
    raise error(f"{where}: {names[0]} and {names[2]} must be frame numbers "
                f"(got {cells.get('onset')!r}, {cells.get('offset')!r}).")
  if onset > offset:
    raise error(f"{where}: {names[0]} {onset} is after {names[2]} {offset}.")
  if apex is not None and not onset <= apex <= offset:
    raise error(f"{where}: {names[1]} {apex} is outside onset..offset ({onset}..{offset}).")
  return onset, apex, offset


def native_emotion(value, natives: Sequence[str], aliases: Mapping[str, str], where: str,
                   error: type[DatasetError]) -> str:
  """The canonical native label of a cell (any case, spaces, known variants)."""
  e = re.sub(r"\s+", " ", str(value if value is not None else "")).strip().lower()
  e = aliases.get(e, e)
  if e not in natives:
    raise error(f"{where}: unknown emotion {value!r}; valid: {', '.join(natives)} "
                "(any case). Fix the cell or drop the row.")
  return e


def examples(pairs: list[tuple], k: int = 3) -> str:
  shown = ", ".join(f"{a!r} -> {b!r}" for a, b in pairs[:k])
  return shown + (f", ... ({len(pairs)} in all)" if len(pairs) > k else "")


def scan_frames(folder: pathlib.Path, pattern: re.Pattern, error: type[DatasetError]
                ) -> tuple[dict[int, pathlib.Path], list[str]]:
  """Frame number -> image file of `folder` (group 1 of `pattern` on the file's stem is
  the number, so 0123 and 123 are one frame), and the names of the other files."""
  frames, stray = {}, []
  for p in sorted(folder.iterdir()):
    m = pattern.match(p.stem)
    if not (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and m):
      stray.append(p.name)
      continue
    n = int(m.group(1))
    if n in frames:
      raise error(f"{folder}: {frames[n].name} and {p.name} are both frame {n}; keep one.")
    frames[n] = p
  return dict(sorted(frames.items())), stray


def find_dir(parent: pathlib.Path, name: str, key: Callable[[str], str]) -> list[pathlib.Path]:
  """`parent/name` if it exists, else the folders of `parent` whose `key` equals name's."""
  exact = parent / name
  if exact.is_dir():
    return [exact]
  return [p for p in parent.iterdir() if p.is_dir() and key(p.name) == key(name)]


def one_dir(matches: Sequence[pathlib.Path], wanted: pathlib.Path, what: str, where: str,
            layout: str, error: type[DatasetError]) -> pathlib.Path:
  """The one folder `find_dir` matched, else an error naming the row and the expected layout."""
  if len(matches) == 1:
    return matches[0]
  raise error(f"{where}: {what} folder {wanted} not found"
              + (f" (ambiguous: {sorted(m.name for m in matches)})" if matches else "")
              + f". Check that the frames are laid out as {layout}, or fix the sheet's row.")


def pick_sheet(dirs: Sequence[pathlib.Path], contains: Sequence[str], notes: list[str],
               missing: str, error: type[DatasetError]) -> pathlib.Path:
  """The best coding sheet in `dirs` (`sheet_candidates`'s order); `missing` is the error
  text when there is none; the others are noted."""
  found = [p for d in dict.fromkeys(dirs) if d.is_dir() for p in sheet_candidates(d, contains)]
  if not found:
    raise error(missing)
  if len(found) > 1:
    notes.append(f"several coding sheets; using {found[0].name} (newest date, then "
                 f"'updated', then version, then xlsx), not {[p.name for p in found[1:]]}")
  return found[0]


def note_key_frames(frames: Mapping[int, pathlib.Path], onset: int, apex: int, offset: int,
                    where: str, notes: list[str]) -> None:
  """Notes an apex at the onset and key frames without an image file (both usable)."""
  if apex == onset:
    notes.append(f"{where}: apex == onset ({apex}); MFS windows overlap")
  absent = [n for n in sorted({onset, apex, offset}) if n not in frames]
  if absent:
    notes.append(f"{where}: key frames {absent} have no image file "
                 f"(folder holds {min(frames)}..{max(frames)})")


def note_stray_files(frames_root: pathlib.Path, notes: list[str]) -> None:
  """Notes files lying in the subject folders beside the video folders."""
  for d in sorted(frames_root.iterdir()):
    if d.is_dir():
      stray = sorted(p.name for p in d.iterdir() if p.is_file())
      if stray:
        notes.append(f"{d.name}: ignored stray files {stray}")


def middle(onset: int, offset: int) -> int:
  """The middle frame of onset..offset: the apex where a dataset codes none."""
  return (onset + offset) // 2


def apex_or_middle(apex: int | None, onset: int, offset: int, where: str,
                   notes: list[str], column: str = "ApexFrame", cell=None) -> tuple[int, str]:
  """(apex, apex rule): the coded apex ("sheet"), else the middle frame ("middle"),
  so that every phase (all of which need an apex) can use the video. `cell` is
  what the sheet says instead of an apex, for the note."""
  if apex is not None:
    return apex, "sheet"
  apex = middle(onset, offset)
  said = f" ({cell!r})" if cell is not None else ""
  notes.append(f"{where}: {column} missing{said}; using the middle frame {apex} of "
               f"{onset}..{offset}")
  return apex, "middle"


def subdirs(d: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def check_unique(videos: Sequence, rows: Sequence[int], sheet: pathlib.Path,
                 error: type[DatasetError]) -> None:
  """Raises naming the first video coded twice (`rows[i]`: the sheet row of videos[i])."""
  seen = {}
  for v, row in zip(videos, rows):
    if v.video_id in seen:
      raise error(f"{sheet.name} row {row}: video {v.video_id} is coded twice (also row "
                  f"{seen[v.video_id]}); delete one of the rows.")
    seen[v.video_id] = row
