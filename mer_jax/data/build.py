r"""Build the CASME II TFDS configs from Python, on first use, and report their quality.

  python -m mer_jax.data.build --configs all --manual_dir ~/casme2
  python -m mer_jax.data.build --configs m2_mfs --manual_dir data/synthetic_casme2 --synthetic
  python -m mer_jax.data.build --configs m2a_af,m3_mfs --manual_dir ~/casme2   # beyond the paper
  python -m mer_jax.data.build --quality --configs all        # Table I of built configs

This is the documented way to build the dataset (mer_jax.data.tfds_cli is
TFDS's own `build`, for those who prefer it). Training calls `ensure_built`,
so that one command is enough. Concurrent callers (several runs of a study,
the processes of a multi-host run) build a config once: a lock file
serialises them and the others reuse the result.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import sys
import time

from mer_jax import cli
from mer_jax.data import casme2
# CONFIG_NAMES and config_name are also this module's: build.config_name(method, phase).
from mer_jax.data.dataset_configs import (CONFIG_NAMES, check_config_name,  # noqa: F401
                                          config_name, parse_configs)


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def builder(config: str, data_dir: str | None = None, **options):
  """The TFDS builder of one config (`options`: detection_cache, workers,
  skip_unreadable, sheet; see mer_jax.data.tfds_casme2)."""
  from mer_jax.data import tfds_casme2
  check_config_name(config)
  return tfds_casme2.Casme2Builder(config=config, data_dir=data_dir or default_data_dir(),
                                   **options)


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


def _has_casme2(manual_dir: pathlib.Path) -> bool:
  if not manual_dir.is_dir():
    return False
  return any(manual_dir.glob("CASME2-coding*")) or any(manual_dir.glob("*/CASME2-coding*"))


def ensure_manual_dir(manual_dir: str, *, synthetic: bool = False, videos: int = 255,
                      subjects: int = 26, seed: int = 0, intensity: float = 1.0,
                      log=print) -> pathlib.Path:
  """The CASME II copy; with `synthetic`, writes the synthetic set there if absent."""
  d = pathlib.Path(manual_dir).expanduser()
  if _has_casme2(d):
    return d
  if not synthetic:
    raise casme2.Casme2Error(
        f"No CASME II copy at {d.resolve()} (no CASME2-coding-*.xlsx/csv there).\n\n"
        + casme2.MANUAL_DOWNLOAD_INSTRUCTIONS)
  from mer_jax.data import synthetic as syn
  with exclusive(d.parent / f".{d.name}.lock"):
    if not _has_casme2(d):
      log(f"Writing the synthetic CASME II ({videos} videos, {subjects} subjects, motion "
          f"intensity {intensity:g}) to {d} ...")
      start = time.perf_counter()
      syn.write_synthetic_casme2(d, videos=videos, subjects=subjects, seed=seed,
                                 intensity=intensity)
      log(f"  done in {time.perf_counter() - start:.0f} s")
  return d


def ensure_built(config: str, manual_dir: str, data_dir: str | None = None, *,
                 synthetic: bool = False, synthetic_videos: int = 255,
                 synthetic_subjects: int = 26, synthetic_intensity: float = 1.0,
                 log=print, **options) -> str:
  """Builds `config` unless it is already built; returns the dataset directory.

  Raises casme2.Casme2Error (with the download instructions) when neither
  the dataset nor the manual dir exists.
  """
  b = builder(config, data_dir, **options)
  if is_built(b):
    return str(b.data_dir)
  with exclusive(pathlib.Path(b.data_path).parent.parent / f".{config}.lock"):
    b = builder(config, data_dir, **options)  # re-read: another process may have built it
    if is_built(b):
      return str(b.data_dir)
    d = ensure_manual_dir(manual_dir, synthetic=synthetic, videos=synthetic_videos,
                          subjects=synthetic_subjects, intensity=synthetic_intensity, log=log)
    import tensorflow_datasets as tfds
    log(f"Building CASME II {config} from {d} into {b.data_dir} (once) ...")
    start = time.perf_counter()
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(d)))
    q = read_quality(b.data_dir)
    log(f"  built in {time.perf_counter() - start:.0f} s: {quality_line(q)}")
  return str(b.data_dir)


def read_quality(dataset_dir) -> dict:
  p = pathlib.Path(dataset_dir) / "quality.json"
  if not p.exists():
    raise FileNotFoundError(f"{p} not found: was this dataset built by mer_jax?")
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
  """What a built config's images hold: 'RGB', 'gray' or M3's 'flow (u, v, magnitude)'."""
  if q.get("method") == "m3":
    return "flow (u, v, magnitude)"
  return "RGB" if q["image_shape"][-1] == 3 else "gray"


def quality_table(qs: list[dict]) -> str:
  """The paper's Table I (dataset and methodology) for built configs, in markdown."""
  rows = ["| config | resolution | colour | face-centring rate | information density "
          "| train / val / test images | borrowed | fallback videos | landmark fallbacks |",
          "|---|---|---|---|---|---|---|---|---|"]
  for q in qs:
    h, w, c = q["image_shape"]
    sp = q["splits"]
    landmark = (str(len(q.get("landmark_fallback_videos", [])))
                if q.get("method") in ("m2a", "m3") else "—")
    rows.append(
        f"| {q['config']} | {h}x{w} | {colour(q)} | "
        f"{q['face_centring_rate']:.3f} | {q['information_density']:,} | "
        f"{' / '.join(str(sp.get(s, {}).get('frames', 0)) for s in ('train', 'validation', 'test'))}"
        f" | {len(q['borrowed'])} | {len(q['fallback_videos'])} | {landmark} |")
  return "\n".join(rows)


def main(argv=None) -> int:
  p = cli.parser("mer_jax.data.build", __doc__)
  p.add_argument("--configs", default="all",
                 help=f"'all' or a comma list of {', '.join(CONFIG_NAMES)}")
  p.add_argument("--manual_dir", default="~/casme2", help="CASME II as distributed")
  p.add_argument("--data_dir", default="", help="TFDS data dir (default ~/tensorflow_datasets)")
  p.add_argument("--synthetic", action="store_true",
                 help="write a synthetic CASME II into manual_dir if it holds none")
  p.add_argument("--videos", type=int, default=255, help="videos of the synthetic CASME II")
  p.add_argument("--subjects", type=int, default=26, help="subjects of the synthetic CASME II")
  p.add_argument("--workers", type=int, default=0, help="processes (default: every core)")
  p.add_argument("--detection_cache", default=None,
                 help="default ~/.cache/mer_jax/detections (see mer_jax.paths); '' = off")
  p.add_argument("--skip_unreadable", action="store_true",
                 help="skip (and report) unreadable frames instead of stopping")
  p.add_argument("--quality", action="store_true", help="print Table I of built configs")
  args = cli.parse(p, argv)
  names = parse_configs(args.configs)
  data_dir = args.data_dir or None
  if args.quality:
    qs = []
    for n in names:
      b = builder(n, data_dir)
      if is_built(b):
        qs.append(read_quality(b.data_dir))
      else:
        print(f"{n}: not built", file=sys.stderr)
    print(quality_table(qs))
    return 0 if qs else 1
  for n in names:
    ensure_built(n, args.manual_dir, data_dir, synthetic=args.synthetic,
                 synthetic_videos=args.videos, synthetic_subjects=args.subjects,
                 workers=args.workers or None, detection_cache=args.detection_cache,
                 skip_unreadable=args.skip_unreadable)
  return 0


if __name__ == "__main__":
  cli.run(main)
