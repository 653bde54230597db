r"""Build each dataset's TFDS configs from Python, on first use, and report their quality.

  python -m mer_jax.data.build --configs all --manual_dir ~/casme2
  python -m mer_jax.data.build --dataset samm --configs m2_mfs --manual_dir ~/SAMM
  python -m mer_jax.data.build --configs m2_mfs --manual_dir data/synthetic_casme2 --synthetic
  python -m mer_jax.data.build --configs m2a_af,m3_mfs --manual_dir ~/casme2   # beyond the paper
  python -m mer_jax.data.build --quality --configs all --manual_dir ~/casme2   # Table I
  python -m mer_jax.data.build --list          # every build: config, source, size, date

This is the one build command (TFDS's own `tfds build datasets/casme2`
builds the same datasets where apache-beam is installed). Training calls
`ensure_built`, so that one command is enough.

A build records its fingerprint (mer_jax.data.fingerprint: the resolved
source directory, the coding sheet's sha256, the synthetic settings, the
data code's own hash) and is handed out only for a request of the same
fingerprint. A build from another source, sheet or code goes to its own
folder, DATA_DIR/DATASET_by_source/KEY/DATASET/CONFIG/VERSION, so builds of
different sources coexist and the log says why a build is made. TFDS's own
`tfds build` writes the same fingerprint into DATA_DIR/casme2/CONFIG/VERSION,
which is reused when it matches; a build without a fingerprint (made before
them) is never reused.

Concurrent callers (several runs of a study, the processes of a multi-host
run) build a config once: a lock file per config and fingerprint serialises
them and the others reuse the result. Under that lock, `incomplete.*` folders
that a killed build left are removed first. A full disk ends in one line
saying how much to free.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pathlib
import shutil
import sys
import time

from mer_jax.plumbing import cli
from mer_jax.data import DATASETS, casme2, fingerprint, sheets
from mer_jax.plumbing.errors import NotFound, UserError, disk_full
from mer_jax.data.dataset_configs import CONFIG_NAMES, check_config_name, parse_configs


def sources_dir(dataset: str) -> str:
  """The folder of ensure_built's builds of `dataset`:
  DATA_DIR/sources_dir(dataset)/KEY/DATASET/CONFIG/VERSION (KEY: fingerprint.key)."""
  return f"{dataset}_by_source"


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def builder(config: str, data_dir: str | None = None, dataset: str = "casme2", **options):
  """The TFDS builder of one config of `dataset` (`options`: detection_cache, workers,
  skip_unreadable, sheet; see mer_jax.data.tfds_builder)."""
  from mer_jax.data import tfds_builder
  check_config_name(config)
  return tfds_builder.builder_class(dataset)(config=config,
                                             data_dir=data_dir or default_data_dir(), **options)


def is_built(b) -> bool:
  return (pathlib.Path(b.data_dir) / "dataset_info.json").exists()


@contextlib.contextmanager
def exclusive(path: pathlib.Path):
  """Holds an exclusive flock on the file `path` (made if missing) while the
  block runs: one process at a time, on this host or a shared file system."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def has_source(dataset: str, manual_dir: pathlib.Path) -> bool:
  """Whether `manual_dir` holds a copy of `dataset`: CASME II's coding sheet; another
  dataset's folder, not empty (its reader says what is wrong with it)."""
  if not manual_dir.is_dir():
    return False
  if dataset == "casme2":
    return any(manual_dir.glob("CASME2-coding*")) or any(manual_dir.glob("*/CASME2-coding*"))
  return any(manual_dir.iterdir())


def ensure_manual_dir(manual_dir: str, *, dataset: str = "casme2", synthetic: bool = False,
                      videos: int = 255, subjects: int = 26, seed: int = 0,
                      intensity: float = 1.0, log=print) -> pathlib.Path:
  """The copy of `dataset`; with `synthetic`, writes its synthetic stand-in there if
  absent (mer_jax.data.synthetic: CASME II's full-size set, another dataset's small
  stand-in of `videos` videos)."""
  d = pathlib.Path(manual_dir).expanduser()
  if has_source(dataset, d):
    made = d / fingerprint.SYNTHETIC_FILE
    wanted = {"videos": videos, "subjects": subjects, "seed": seed, "intensity": intensity}
    if synthetic and made.exists() and any(
        json.loads(made.read_text()).get(k) != v for k, v in wanted.items()):
      log(f"{d} holds a synthetic CASME II of other settings "
          f"({fingerprint.show('synthetic', {'synthetic': json.loads(made.read_text())})}); "
          "using it as it is (another manual_dir writes a new one)")
    return d
  if not synthetic:
    if dataset == "casme2":
      raise casme2.Casme2Error(
          f"No CASME II copy at {d.resolve()} (no CASME2-coding-*.xlsx/csv there).\n\n"
          + casme2.MANUAL_DOWNLOAD_INSTRUCTIONS)
    from mer_jax.data import tfds_builder
    raise sheets.DatasetError(f"No {dataset} copy at {d.resolve()} (the folder is missing or "
                             f"empty).\n\n{tfds_builder.manual_download_instructions(dataset)}")
  from mer_jax.data import synthetic as syn
  with exclusive(d.parent / f".{d.name}.lock"):
    if not has_source(dataset, d):
      log(f"Writing the synthetic {dataset} ({videos} videos, {subjects} subjects, motion "
          f"intensity {intensity:g}) to {d} ...")
      start = time.perf_counter()
      if dataset == "casme2":
        syn.write_synthetic_casme2(d, videos=videos, subjects=subjects, seed=seed,
                                   intensity=intensity)
      else:
        syn.write_stand_in(dataset, d, videos=videos, subjects=subjects, seed=seed,
                           intensity=intensity)
      log(f"  done in {time.perf_counter() - start:.0f} s")
  return d


def ensure_built(config: str, manual_dir: str, data_dir: str | None = None, *,
                 dataset: str = "casme2", synthetic: bool = False, synthetic_videos: int = 255,
                 synthetic_subjects: int = 26, synthetic_intensity: float = 1.0,
                 log=print, **options) -> str:
  """The dataset directory of `dataset`'s `config` built from `manual_dir`, built
  first unless a build of the same fingerprint exists.

  A build of another fingerprint (source, sheet, synthetic settings, code) is
  never returned: the new one goes to its own folder, DATA_DIR/sources_dir(dataset)/KEY/.
  When `manual_dir` is absent and `synthetic` is off, the newest build made
  from that same path by this code is returned (a cluster may
  hold the built data but not the frames). Raises sheets.DatasetError (with the
  download instructions) when there is neither, or when the disk fills.
  """
  check_config_name(config)
  if dataset not in DATASETS:
    raise UserError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
  root = pathlib.Path(data_dir or default_data_dir())
  if synthetic:
    ensure_manual_dir(manual_dir, dataset=dataset, synthetic=True, videos=synthetic_videos,
                      subjects=synthetic_subjects, intensity=synthetic_intensity, log=log)
  found = find_build(config, manual_dir, root, dataset=dataset, log=log, **options)
  if found is not None:
    return str(found)
  # raises with the download instructions when absent
  d = ensure_manual_dir(manual_dir, dataset=dataset)
  want = builder(config, str(root), dataset, **options).source_fingerprint(d)
  target = str(root / sources_dir(dataset) / fingerprint.key(want))
  b = builder(config, target, dataset, **options)
  config_dir = pathlib.Path(b.data_path).parent
  # Only ensure_built builds under sources_dir, always under this lock: a folder
  # `incomplete.*` found while holding it is a killed build's, never a live one's.
  with exclusive(config_dir.parent / f".{config}.lock"):
    b = builder(config, target, dataset, **options)  # re-read: another may have built it
    if is_built(b):
      return str(b.data_dir)
    for stale in sorted(config_dir.glob("incomplete.*")):
      log(f"Removing {stale}, left by a build that was stopped")
      shutil.rmtree(stale)
    import tensorflow_datasets as tfds
    log(f"Building {dataset} {config} from {d} into {b.data_dir} (once): "
        f"{why_new(config, root, want, dataset)} ...")
    start = time.perf_counter()
    try:
      b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(d)))
    except (OSError, RuntimeError) as e:
      if disk_full(e) is None:
        raise
      raise sheets.DatasetError(disk_full_message(e, config, d, root, options.get("sheet"),
                                                  dataset)) from e
    q = read_quality(b.data_dir)
    log(f"  built in {time.perf_counter() - start:.0f} s: {quality_line(q)}")
  return str(b.data_dir)


def find_build(config: str, manual_dir: str, data_dir: str | pathlib.Path | None = None, *,
               dataset: str = "casme2", log=print, **options) -> pathlib.Path | None:
  """The build of `dataset`'s `config` whose fingerprint is that of `manual_dir` now
  (with this code and `options`' sheet), or None. Without a copy at `manual_dir`,
  the newest build from that path by this code (said in `log`)."""
  root = pathlib.Path(data_dir or default_data_dir())
  src = pathlib.Path(manual_dir).expanduser()
  if not has_source(dataset, src):
    d = build_of_absent_source(config, src, root, dataset)
    if d is not None:
      log(f"{src} is not there to check its coding sheet; using the {config} built from it "
          f"at {d} ({fingerprint.describe(fingerprint.read(d))})")
    return d
  want = builder(config, str(root), dataset, **options).source_fingerprint(src)
  same = [b for b in built_dirs(root, config, dataset)
          if same_fingerprint(fingerprint.read(b), want)]
  return same[-1] if same else None


def built_dirs(data_dir: str | pathlib.Path | None = None, config: str = "*",
               dataset: str = "*") -> list[pathlib.Path]:
  """Every complete build of `dataset`'s `config` (globs) under `data_dir`: ensure_built's
  (DATASET_by_source/KEY/DATASET/CONFIG/VERSION) and TFDS's own (DATASET/CONFIG/VERSION),
  oldest first."""
  root = pathlib.Path(data_dir or default_data_dir())
  names = DATASETS if dataset == "*" else (dataset,)
  infos = [p for name in names
           for pattern in (f"{name}/{config}/*/dataset_info.json",
                           f"{sources_dir(name)}/*/{name}/{config}/*/dataset_info.json")
           for p in root.glob(pattern) if not p.parent.name.startswith("incomplete.")]
  return [p.parent for p in sorted(infos, key=lambda p: p.stat().st_mtime)]


def same_fingerprint(a: dict | None, b: dict) -> bool:
  return a is not None and all(a.get(f) == b.get(f) for f in fingerprint.FIELDS)


def build_of_absent_source(config: str, src: pathlib.Path, root: pathlib.Path,
                           dataset: str = "casme2"):
  """The newest build of `dataset` from the path `src` by this code, or None."""
  found = [d for d in built_dirs(root, config, dataset)
           if (fp := fingerprint.read(d)) and fp["source"] == str(src.resolve())
           and fp["code"] == fingerprint.code_version()]
  return found[-1] if found else None


def why_new(config: str, root: pathlib.Path, want: dict, dataset: str = "casme2") -> str:
  """Why a build is made: none yet, or how the newest build of `config` differs."""
  others = built_dirs(root, config, dataset)
  if not others:
    return "no earlier build of it here"
  old = fingerprint.read(others[-1])
  if old is None:
    return (f"the build at {others[-1]} has no {fingerprint.FILE} (made before builds "
            "recorded their source), so it is not reused")
  return (f"the build at {others[-1]} differs ({'; '.join(fingerprint.differences(old, want))})"
          " and stays there (see --list)")


def disk_full_message(e: BaseException, config: str, manual_dir: pathlib.Path,
                      root: pathlib.Path, sheet=None, dataset: str = "casme2") -> str:
  """One line: where the disk filled, about how much to free (the build's frames
  x their uncompressed bytes, an upper bound: PNG compresses)."""
  from mer_jax.data import dataset_configs, preprocess, tfds_builder
  method, phase = dataset_configs.parse_config_name(config)
  videos = tfds_builder.read_source(dataset, manual_dir, sheet).videos
  frames = sum(len(preprocess.phase_frames(v, phase.value, method.value)) for v in videos)
  need = frames * math.prod(method.image_shape)
  where = root
  filename = getattr(e, "filename", None)
  if filename and not pathlib.Path(filename).resolve().is_relative_to(root.resolve()):
    where = pathlib.Path(filename).parent  # another file system: the detection cache, /tmp
  free = shutil.disk_usage(where if where.exists() else root).free
  return (f"no space left on device while building {config} into {root}: free about "
          f"{size_text(max(need - free, 1e8))} under {where} (the build needs about "
          f"{size_text(need)} for {frames} images; {size_text(free)} are free) and rerun")


def size_text(n: float) -> str:
  return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def listing(data_dir: str | pathlib.Path | None = None) -> str:
  """What is built under `data_dir` and from where, one build per three lines."""
  root = pathlib.Path(data_dir or default_data_dir())
  lines = []
  for d in sorted(built_dirs(root), key=lambda d: (d.parent.name, d.stat().st_mtime)):
    fp = fingerprint.read(d)
    q = json.loads((d / "quality.json").read_text()) if (d / "quality.json").exists() else {}
    size = size_text(sum(f.stat().st_size for f in d.rglob("*") if f.is_file()))
    when = time.localtime((d / "dataset_info.json").stat().st_mtime)
    lines += [f"{d.parent.name}  {d}",
              "  " + (fingerprint.describe(fp) if fp else
                      f"no {fingerprint.FILE}: built before builds recorded their source; "
                      "never reused (delete it)"),
              f"  {q.get('videos', '?')} videos, {q.get('frames', '?')} images, {size}, "
              f"built {time.strftime('%Y-%m-%d %H:%M', when)}"]
  return "\n".join(lines) if lines else f"nothing built under {root}"


def read_quality(dataset_dir) -> dict:
  p = pathlib.Path(dataset_dir) / "quality.json"
  if not p.exists():
    raise NotFound(f"{p} not found: was this dataset built by mer_jax?")
  return json.loads(p.read_text())


def quality_line(q: dict) -> str:
  return (f"{q['config']}: {q['videos']} videos, {q['frames']} images "
          f"{'x'.join(map(str, q['image_shape']))}, face-centring rate "
          f"{q['face_centring_rate']:.3f}, information density {q['information_density']:,}, "
          f"borrowed detections {len(q['borrowed'])}, fallback videos "
          f"{len(q['fallback_videos'])}"
          + (f", landmark fallback videos {len(q['landmark_fallback_videos'])}"
             if q.get("method") in ("m2a", "m3") else "")
          + f", skipped frames {len(q['skipped'])}")


def colour(q: dict) -> str:
  """What a built config's images hold: 'RGB', 'gray' or M3's 'flow (u, v, magnitude)';
  three channels of a gray source (SAMM's M1) say 'gray (3 channels: the source has no
  colour)'."""
  if q.get("method") == "m3":
    return "flow (u, v, magnitude)"
  if q["image_shape"][-1] == 1:
    return "gray"
  return ("gray (3 channels: the source has no colour)" if q.get("source_colour") == "gray"
          else "RGB")


def quality_table(qs: list[dict]) -> str:
  """The paper's Table I (dataset and methodology) for built configs, in markdown."""
  rows = ["| dataset | config | resolution | colour | face-centring rate | information density "
          "| train / val / test images | borrowed | fallback videos | landmark fallbacks |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  for q in qs:
    h, w, c = q["image_shape"]
    sp = q["splits"]
    landmark = (str(len(q.get("landmark_fallback_videos", [])))
                if q.get("method") in ("m2a", "m3") else "—")
    rows.append(
        f"| {q.get('dataset', 'casme2')} | {q['config']} | {h}x{w} | {colour(q)} | "
        f"{q['face_centring_rate']:.3f} | {q['information_density']:,} | "
        f"{' / '.join(str(sp.get(s, {}).get('frames', 0)) for s in ('train', 'validation', 'test'))}"
        f" | {len(q['borrowed'])} | {len(q['fallback_videos'])} | {landmark} |")
  return "\n".join(rows)


def main(argv=None) -> int:
  p = cli.parser("mer_jax.data.build", __doc__)
  p.add_argument("--configs", default="all",
                 help="'all' (the twelve configs of m1, m2, m2a, m3) or a comma list of "
                      f"{', '.join(CONFIG_NAMES)}")
  p.add_argument("--dataset", default="casme2", choices=DATASETS,
                 help="the dataset to build (the MEGC 2019 composite reads the casme2, samm "
                      "and smic_hs builds: build each)")
  p.add_argument("--manual_dir", default="~/casme2", help="the dataset as distributed")
  p.add_argument("--data_dir", default="", help="TFDS data dir (default ~/tensorflow_datasets)")
  p.add_argument("--synthetic", action="store_true",
                 help="write a synthetic CASME II into manual_dir if it holds none")
  p.add_argument("--videos", type=int, default=255, help="videos of the synthetic CASME II")
  p.add_argument("--subjects", type=int, default=26, help="subjects of the synthetic CASME II")
  p.add_argument("--workers", type=int, default=0, help="processes (default: every core)")
  p.add_argument("--detection_cache", default=None,
                 help="default ~/.cache/mer_jax/detections (see mer_jax.plumbing.paths); '' = off")
  p.add_argument("--skip_unreadable", action="store_true",
                 help="skip (and report) unreadable frames instead of stopping")
  p.add_argument("--quality", action="store_true",
                 help="print Table I of the configs built from --manual_dir")
  p.add_argument("--list", action="store_true",
                 help="list every build under --data_dir: config, source, size, date")
  args = cli.parse(p, argv)
  if args.list:
    print(listing(args.data_dir or None))
    return 0
  names = parse_configs(args.configs)
  data_dir = args.data_dir or None
  if args.quality:
    qs = []
    for n in names:
      d = find_build(n, args.manual_dir, data_dir, dataset=args.dataset, log=lambda *a: None)
      if d is not None:
        qs.append(read_quality(d))
      else:
        print(f"{n}: not built from {args.manual_dir}", file=sys.stderr)
    print(quality_table(qs))
    return 0 if qs else 1
  for n in names:
    ensure_built(n, args.manual_dir, data_dir, dataset=args.dataset, synthetic=args.synthetic,
                 synthetic_videos=args.videos, synthetic_subjects=args.subjects,
                 workers=args.workers or None, detection_cache=args.detection_cache,
                 skip_unreadable=args.skip_unreadable)
  return 0


if __name__ == "__main__":
  cli.run(main)
