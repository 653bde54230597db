r"""A trained run's emotion probabilities for a new clip.

  python -m mer_jax.predict --workdir runs/pool_m36_mfs --frames CLIP_DIR_OR_VIDEO \
      [--onset I --apex J --offset K] [--json out.json]
  python -m mer_jax.predict --artifact runs/pool_m36_mfs/export --frames CLIP_DIR_OR_VIDEO

With --artifact the network is the run's export (python -m mer_jax.export): the StableHLO
model and the preprocessing its contract.json states, with no Flax model code.

The clip goes through what training saw: the run's preprocessing method (M1
centre crop 384 RGB / M2 dlib face crop 224 gray / M2A face aligned by the
onset frame's landmarks / M3 optical flow from the onset frame's aligned face;
faces chosen over the MFS frames), its phase's frames (AF / KFS / MFS from
onset, apex, offset; for M3 AF is the flow onset -> apex and KFS/MFS leave
out the onset frame, whose flow is zero), the network on every frame, and the
video decision (majority vote of the frames, ties broken by summed
probability; AF is one frame). It prints the per-frame and clip-level
probabilities of the seven emotions.

CLIP is a folder of frames (jpg/png/bmp; a frame's number is the last integer
in its file name, as CASME II's `img46.jpg`, else its rank in name order from
1) or a video file (decoded with PyAV; frames numbered from 1). --onset,
--apex and --offset are frame numbers. Without them: onset is the first frame,
offset the last, and apex the frame that differs most from the onset frame
(mean absolute grey-level difference inside the region the network sees: the
face box for M2, M2A and M3, the centre square for M1, after a light blur
against sensor noise and a subpixel registration to the onset frame against
head drift). The output says which were picked that way. (A clip whose onset
is its apex has no motion to find: pass --apex.)
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import tempfile
from typing import Callable, Sequence

import numpy as np

from mer_jax.plumbing import cli
from mer_jax.data import faces, phases, preprocess
from mer_jax.run import sources
from mer_jax.data.pixels import centre_square, expand_box, read_frame
from mer_jax.data.videos import Video
from mer_jax.plumbing.errors import UsageError, UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")


class PredictError(UserError, ValueError):
  """Bad input for prediction; the message says what to do."""


# --- frames ------------------------------------------------------------------


def frames_of_folder(folder: pathlib.Path) -> dict[int, pathlib.Path]:
  """{frame number: file} of the images in a folder (numbers from file names)."""
  files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise PredictError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); pass "
                       "a folder of the clip's frames or a video file.")
  numbers = [re.findall(r"\d+", p.stem) for p in files]
  if all(numbers):
    frames = {}
    for p, ns in zip(files, numbers):
      n = int(ns[-1])
      if n in frames:
        raise PredictError(f"{frames[n].name} and {p.name} both look like frame {n}; keep one "
                           "clip per folder.")
      frames[n] = p
    return dict(sorted(frames.items()))
  return {i + 1: p for i, p in enumerate(files)}


def frames_of_video(path: pathlib.Path, out_dir: pathlib.Path) -> dict[int, pathlib.Path]:
  """Decodes a video file into out_dir/img{N}.png (N from 1); {N: file}."""
  try:
    import av
  except ImportError:  # pragma: no cover - av is in requirements.txt
    raise PredictError("Reading video files needs PyAV (pip install av); or pass a folder "
                       "of frames.") from None
  from PIL import Image
  frames = {}
  try:
    with av.open(str(path)) as container:
      for i, frame in enumerate(container.decode(video=0), start=1):
        f = out_dir / f"img{i}.png"
        Image.fromarray(frame.to_ndarray(format="rgb24")).save(f)
        frames[i] = f
  except (av.error.FFmpegError, ValueError) as e:  # type: ignore[attr-defined]
    raise PredictError(f"cannot decode video {path} ({type(e).__name__}: {e}); convert it "
                       "to mp4, or extract its frames into a folder.") from None
  if not frames:
    raise PredictError(f"{path} has no video frames.")
  return frames


# --- key frames ----------------------------------------------------------------


def _region(rgb: np.ndarray, method: preprocess.Method, detector) -> tuple[int, int, int, int]:
  h, w = rgb.shape[:2]
  if method.crops_face:
    found = detector(rgb)
    if found:
      return expand_box(max(found, key=faces.box_area), h, w)
  return centre_square(h, w)


def _gray_small(rgb: np.ndarray, box, size: int = 112) -> np.ndarray:
  from PIL import Image, ImageFilter
  l, t, r, b = (int(round(v)) for v in box)
  img = Image.fromarray(rgb[t:b, l:r]).convert("L").resize((size, size), Image.BILINEAR)
  return np.asarray(img.filter(ImageFilter.GaussianBlur(1.0)), np.float32)


def motion_curve(frames: dict[int, pathlib.Path], onset: int, offset: int,
                 method: "preprocess.Method | str", detector=None) -> dict[int, float]:
  """{frame: mean |grey difference| from the onset frame} over onset..offset.

  Measured inside the region the network sees (M2, M2A, M3: the onset frame's
  largest face box + margin; M1: the centre square) at 112 px after a 1-px Gaussian
  blur, with each frame first registered to the onset frame (subpixel phase
  correlation), so head drift and camera jitter do not count as motion.
  """
  from scipy import ndimage
  from skimage.registration import phase_cross_correlation
  method = preprocess.Method.parse(method)
  if method.crops_face and detector is None:
    detector = faces.FaceDetector()
  first = read_frame(frames[onset])
  box = _region(first, method, detector)
  ref = _gray_small(first, box)
  m = ref.shape[0] // 16  # border the registration shift may have filled
  curve = {}
  for n, p in frames.items():
    if onset <= n <= offset:
      img = _gray_small(read_frame(p), box)
      shift = phase_cross_correlation(ref, img, upsample_factor=10, normalization=None)[0]
      aligned = ndimage.shift(img, shift, order=1, mode="nearest")
      curve[n] = float(np.mean(np.abs(aligned - ref)[m:-m, m:-m]))
  return curve


def key_frames(frames: dict[int, pathlib.Path], method, onset: int | None = None,
               apex: int | None = None, offset: int | None = None,
               detector=None) -> tuple[int, int, int, list[str]]:
  """(onset, apex, offset, notes): given ones checked, missing ones picked."""
  numbers = sorted(frames)
  notes = []
  for name, v in (("onset", onset), ("apex", apex), ("offset", offset)):
    if v is not None and v not in frames:
      raise PredictError(f"--{name} {v} is not a frame of the clip (frames {numbers[0]}.."
                         f"{numbers[-1]}, {len(numbers)} files).")
  if onset is None:
    onset = numbers[0]
    notes.append(f"onset: frame {onset}, the first frame (pass --onset to set it)")
  if offset is None:
    offset = numbers[-1]
    notes.append(f"offset: frame {offset}, the last frame (pass --offset to set it)")
  if not onset <= offset:
    raise PredictError(f"onset {onset} is after offset {offset}.")
  if apex is None:
    curve = motion_curve(frames, onset, offset, method, detector)
    apex = max(curve, key=lambda n: (curve[n], -n))
    notes.append(f"apex: frame {apex}, the largest-motion frame: mean absolute grey-level "
                 f"difference from the onset frame {curve[apex]:.2f} inside the region the "
                 f"network sees (median over the clip {np.median(list(curve.values())):.2f}; "
                 "pass --apex to set it)")
  if not onset <= apex <= offset:
    raise PredictError(f"apex {apex} is outside onset..offset ({onset}..{offset}).")
  return onset, apex, offset, notes


# --- prediction ----------------------------------------------------------------


def clip_video(frames: dict[int, pathlib.Path], onset: int, apex: int, offset: int,
               name: str) -> Video:
  """The clip as a CASME II Video (emotion unknown: 'others' as a placeholder)."""
  return Video(dataset="casme2", subject="clip", episode=name, onset=onset, apex=apex,
               offset=offset, emotion="others", frames=dict(frames))


def clip_path(clip: str | pathlib.Path) -> pathlib.Path:
  clip = pathlib.Path(clip).expanduser()
  if not clip.exists():
    raise PredictError(f"{clip} does not exist: pass a folder of frames or a video file.")
  return clip


@dataclasses.dataclass
class Predictor:
  """A trained model as predict uses it: the preprocessing it was trained on, its labels in
  head order, the probabilities of a batch of uint8 images, and where it comes from
  (the result's checkpoint, step, model, workdir and, for an export, artifact)."""
  method: preprocess.Method
  phase: phases.Phase
  labels: tuple[str, ...]
  probabilities: Callable[[np.ndarray], np.ndarray]
  source: dict


def run_predictor(workdir: str | pathlib.Path, checkpoint: str = "best") -> Predictor:
  """A run directory's best (else latest) checkpoint through the Flax model."""
  import jax

  from mer_jax.plumbing import runtime
  from mer_jax.run import experiment, sequences, steps

  config = experiment.load_run_config(workdir)
  if sequences.is_temporal(config):
    raise PredictError(f"{workdir} is a temporal-head run (model.temporal="
                       f"{config.model.temporal}); predict runs frame-vote runs only: evaluate "
                       "it with python -m mer_jax.evaluate, or predict with a frame model's run.")
  method = preprocess.Method.parse(config.data.method)
  in_chans = method.image_shape[-1]
  model = steps.build_model(config, in_chans)
  restored = experiment.restore_state(workdir, config, model, in_chans, runtime.make_mesh(),
                                      checkpoint=checkpoint)
  params = restored.state["params"]
  predict_fn = jax.jit(steps.make_predict_step(model, config.model.img_size))

  def probabilities(batch):
    return np.concatenate([np.asarray(predict_fn(params, batch[i:i + 32]))
                           for i in range(0, len(batch), 32)])

  return Predictor(method, phases.Phase.parse(config.data.phase),
                   sources.classes(config.data),
                   probabilities,
                   {"workdir": str(pathlib.Path(workdir).absolute()), "checkpoint": restored.kind,
                    "step": int(restored.state["step"]), "model": config.model.name})


def artifact_predictor(path: str | pathlib.Path) -> Predictor:
  """An export of mer_jax.export (no Flax, no model code): its contract gives the method,
  phase, labels and the preprocessing before the StableHLO model."""
  from mer_jax.run import artifact

  a = artifact.load(path)
  c = a.contract
  return Predictor(preprocess.Method.parse(c["method"]), phases.Phase.parse(c["phase"]),
                   tuple(c["labels"]), a.probabilities,
                   {"workdir": c["workdir"], "checkpoint": c["checkpoint"]["kind"],
                    "step": c["checkpoint"]["step"], "model": c["model"],
                    "artifact": str(a.directory)})


def predict_clip(workdir: str | pathlib.Path, clip: str | pathlib.Path, *,
                 onset: int | None = None, apex: int | None = None, offset: int | None = None,
                 checkpoint: str = "best", detector=None) -> dict:
  """The run's probabilities for a clip: per frame and for the clip."""
  clip_path(clip)   # before the model is read
  return predict_with(run_predictor(workdir, checkpoint), clip, onset=onset, apex=apex,
                      offset=offset, detector=detector)


def predict_with(predictor: Predictor, clip: str | pathlib.Path, *,
                 onset: int | None = None, apex: int | None = None, offset: int | None = None,
                 detector=None) -> dict:
  """A model's probabilities for a clip: per frame and for the clip."""
  from mer_jax import metrics

  clip = clip_path(clip)
  method, phase = predictor.method, predictor.phase
  detector = detector if detector is not None else (
      faces.FaceDetector() if method.crops_face else None)

  with tempfile.TemporaryDirectory(prefix="mer_jax_predict_") as tmp:
    if clip.is_dir():
      frames = frames_of_folder(clip)
    elif clip.suffix.lower() in VIDEO_SUFFIXES:
      frames = frames_of_video(clip, pathlib.Path(tmp))
    else:
      raise PredictError(f"{clip} is neither a folder of frames nor a video file "
                         f"({', '.join(VIDEO_SUFFIXES)}).")
    onset, apex, offset, notes = key_frames(frames, method, onset, apex, offset, detector)
    video = clip_video(frames, onset, apex, offset, clip.stem)
    selected = preprocess.phase_frames(video, phase, method)  # M3: not the onset
    context = [f.frame_index for f in phases.select_frames(video, "mfs")]
    images, report = preprocess.preprocess_video(video, selected, method,
                                                 context_frames=context, detector=detector)
  batch = np.stack([im if im.ndim == 3 else im[..., None] for im in images])
  probs = predictor.probabilities(batch)
  _, video_pred = metrics.video_vote(probs, [video.video_id] * len(probs))
  pred = int(video_pred[0])
  if method.crops_face and report.fallback:
    notes.append(f"no face was found in the clip: the images are centre crops (the "
                 f"{method.value.upper()} fallback), so the prediction is unreliable")
  elif report.landmark_fallback:
    notes.append("no plausible landmarks on the onset frame's face: the faces are M2's "
                 "unaligned crops (the landmark fallback)")
  elif report.borrowed:
    notes.append(f"{len(report.borrowed)} frame(s) without a face detection borrowed the "
                 "nearest frame's box")
  if method.is_flow:
    notes.append(f"each frame's image is the optical flow from the onset frame {onset} to it")
  labels = list(predictor.labels)
  return {
      "clip": str(clip), **predictor.source,
      "method": method.value, "phase": phase.value,
      "onset": onset, "apex": apex, "offset": offset, "notes": notes,
      "emotions": labels,
      "frames": [{"frame": f.frame_index, "role": f.role,
                  "probs": [float(p) for p in probs[i]]} for i, f in enumerate(selected)],
      "probs": [float(p) for p in probs.mean(0)],
      "votes": [int(v) for v in np.bincount(probs.argmax(-1), minlength=len(labels))],
      "prediction": labels[pred],
  }


def format_result(r: dict) -> str:
  em = r["emotions"]
  source = f"{r['checkpoint']} checkpoint of {r['workdir']}, step {r['step']}"
  if "artifact" in r:
    source = f"the export {r['artifact']} of the {source}"
  lines = [f"{r['clip']}: {r['model']} {r['method'].upper()} {r['phase'].upper()} ({source})",
           f"onset {r['onset']}, apex {r['apex']}, offset {r['offset']}"]
  lines += [f"  {n}" for n in r["notes"]]
  head = f"{'frame':>7} {'role':>7} " + " ".join(f"{e[:10]:>10}" for e in em)
  lines += ["", head]
  for f in r["frames"]:
    lines.append(f"{f['frame']:>7} {f['role']:>7} " + " ".join(f"{p:>10.3f}" for p in f["probs"]))
  lines.append(f"{'mean':>7} {'':>7} " + " ".join(f"{p:>10.3f}" for p in r["probs"]))
  if len(r["frames"]) > 1:
    lines.append(f"{'votes':>7} {'':>7} " + " ".join(f"{v:>10d}" for v in r["votes"]))
  lines += ["", f"prediction: {r['prediction']}"]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  p = cli.parser("mer_jax.predict", __doc__)
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument("--workdir", help="a run directory of mer_jax.train")
  model.add_argument("--artifact", help="an export directory of mer_jax.export (needs no "
                     "Flax: its contract.json gives the preprocessing)")
  p.add_argument("--frames", required=True, help="folder of frames, or a video file")
  p.add_argument("--onset", type=int)
  p.add_argument("--apex", type=int)
  p.add_argument("--offset", type=int)
  p.add_argument("--checkpoint", choices=("best", "latest"), default=None,
                 help="which checkpoint of --workdir (default best)")
  p.add_argument("--json", help="also write the result here")
  args = cli.parse(p, argv)
  if args.artifact and args.checkpoint:
    raise UsageError("--checkpoint is for --workdir; an export holds one checkpoint "
                     "(choose it with mer_jax.export --checkpoint).")
  clip_path(args.frames)
  predictor = (artifact_predictor(args.artifact) if args.artifact
               else run_predictor(args.workdir, args.checkpoint or "best"))
  r = predict_with(predictor, args.frames, onset=args.onset, apex=args.apex,
                   offset=args.offset)
  print(format_result(r))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(r, indent=1))
  return 0


if __name__ == "__main__":
  cli.run(main)
