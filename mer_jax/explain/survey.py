"""A trained run explained: attribution maps of a split's frames and where they fall.

For each frame of the split (or of its first --max_videos videos in id
order) and each method, the map of the frame's true class (the evidence the
model finds for what the frame is). Maps are at the dataset image's
resolution (the model's on-device resize is part of the explained function),
in the image's pixel units (0-255). Writes into RUN/explain/:
- explain.json: per method, face mass with its chance level and region
  masses (means over frames, overall and per true class; and per video, the
  study report's resampling unit), the deletion curve (video-level macro-F1)
  against random removal with their AUCs and each point's voted predictions
  (mer_jax.analysis.looking draws its intervals from them), timings;
- maps.npz: the maps (float16), face boxes, landmarks, labels, video ids and
  frame numbers, from which every number of explain.json is recomputed;
- explain.png: overlays of a few videos per class (their middle frame).
"""
from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np

from mer_jax.data import preprocess
from mer_jax.explain import methods, where
from mer_jax.models import family
from mer_jax.plumbing.errors import UsageError
from mer_jax.run import experiment, input_pipeline, sources, steps

MODEL_METHODS = {"vit": "attention_rollout", "swin": "grad_cam", "poolformer": "grad_cam"}
ALL_METHODS = methods.METHODS + ("attention_rollout", "grad_cam")
FACE_BOX = {
    "m1": "the frame's dlib face box in the centre square: face vs background",
    "m2": "the frame's dlib face box in its crop; the crop is that box + 20 px, so the box "
          "fills most of the image and the chance level is high by construction",
    "m2a": "the frame's dlib face box through the video's alignment transform",
    "m3": "the frame's dlib face box through the video's alignment transform (flow images)",
}


def default_methods(model_name: str) -> list[str]:
  return ["integrated_gradients", "smoothgrad", MODEL_METHODS[family(model_name)]]


def check_methods(names, model_name: str) -> list[str]:
  fam = family(model_name)
  for m in names:
    if m not in ALL_METHODS:
      raise UsageError(f"unknown --method {m!r}; valid: {', '.join(ALL_METHODS)}")
    if m in MODEL_METHODS.values() and m != MODEL_METHODS[fam]:
      raise UsageError(f"--method {m} does not apply to {model_name} ({fam}); it takes "
                       f"{MODEL_METHODS[fam]} or a model-agnostic one "
                       f"({', '.join(methods.METHODS)})")
  return list(names)


def select_videos(data: input_pipeline.SplitData, max_videos: int | None):
  """The split's frames of its first `max_videos` videos (sorted ids; all if None)."""
  vids = np.unique(data.video_ids)
  if max_videos is not None:
    vids = vids[:max_videos]
  return data.take(np.isin(data.video_ids, vids))


def frame_geometry(source: str, dataset: str, data: input_pipeline.SplitData, method: str,
                   say=print):
  """(boxes (N, 4), landmarks (N, 68, 2)) of the frames, nan where unknown; None if
  the dataset's frames are not on this machine (or the run read several builds)."""
  from mer_jax.data import load_videos
  from mer_jax.explain.geometry import video_geometry
  if not source or not pathlib.Path(source).is_dir():
    say(f"no {dataset or 'dataset'} frames at {source}: no face boxes, so no face or "
        "region mass")
    return None
  videos = {v.video_id: v for v in load_videos(dataset, source)}
  boxes = np.full((len(data), 4), np.nan)
  marks = np.full((len(data), 68, 2), np.nan)
  from mer_jax.data import faces
  detector, lm68 = faces.FaceDetector(), faces.LandmarkDetector(68)
  lm5 = faces.LandmarkDetector(5) if preprocess.Method.parse(method).aligns else None
  cache = faces.DetectionCache()
  for vid in np.unique(data.video_ids):
    rows = np.flatnonzero(data.video_ids == vid)
    geo = video_geometry(videos[vid], [int(data.frame_index[i]) for i in rows], method,
                         detector=detector, landmarker68=lm68, landmarker5=lm5, cache=cache)
    for i in rows:
      boxes[i], marks[i] = geo[int(data.frame_index[i])]
  return boxes, marks


def _summary(values, chance, labels, classes) -> dict:
  def one(sel):
    v, c = values[sel], chance[sel]
    ok = np.isfinite(v)
    return {"mass": float(np.mean(v[ok])) if ok.any() else None,
            "chance": float(np.mean(c[ok])) if ok.any() else None, "frames": int(ok.sum())}
  out = {"all": one(np.ones(len(values), bool)), "per_class": {}}
  for k in np.unique(labels):
    out["per_class"][classes[int(k)]] = one(labels == k)
  return out


def per_video(values, video_ids) -> list:
  """Each video's (sorted ids) mean of its frames' finite values; None where it has none.
  The study report resamples videos, the unit a test set is drawn in."""
  values, video_ids = np.asarray(values, np.float64), np.asarray(video_ids)
  out = []
  for vid in np.unique(video_ids):
    v = values[video_ids == vid]
    v = v[np.isfinite(v)]
    out.append(float(v.mean()) if v.size else None)
  return out


def compute_maps(name: str, setup_model, params, images, targets, img_size: int,
                 settings: dict) -> np.ndarray:
  prepare = lambda x: input_pipeline.preprocess_eval(x, img_size)
  if name == "attention_rollout":
    return methods.attention_rollout(setup_model, params, images, prepare=prepare)
  if name == "grad_cam":
    return methods.grad_cam(setup_model, params, images, targets, prepare=prepare)

  def logits(params, x):
    return setup_model.apply({"params": params}, prepare(x), train=False)
  # A Partial: the weights enter the compiled program as arguments, not constants.
  return methods.attribute(jax.tree_util.Partial(logits, params), images, targets, name,
                           **settings)


def explain_run(workdir, *, split: str = "test", method_names=None,
                max_videos: int | None = None, checkpoint: str = "best", steps_ig: int = 32,
                samples: int = 16, noise: float = 0.15, seed: int = 0, figure_videos: int = 2,
                say=print) -> dict:
  """Explains a run's split (see the module's docstring); returns explain.json's dict."""
  workdir = pathlib.Path(workdir).absolute()
  config = experiment.load_run_config(workdir)
  names = check_methods(method_names or default_methods(config.model.name), config.model.name)
  if split not in input_pipeline.SPLITS:
    raise UsageError(f"--split must be one of {', '.join(input_pipeline.SPLITS)}")
  if max_videos is not None and max_videos < 1:
    raise UsageError("--max_videos must be at least 1")
  setup = experiment.make_setup(config, log=lambda *a: None)
  restored = experiment.restore_state(workdir, config, setup.model, setup.in_chans, setup.mesh,
                                      checkpoint=checkpoint, say=say)
  params = jax.device_get(restored.state["params"])
  data = select_videos(setup.data[split], max_videos)
  img_size = config.model.img_size
  classes = sources.classes(config.data)
  say(f"explaining {data.num_videos} {split} videos ({len(data)} frames) of {workdir} "
      f"({restored.kind} checkpoint, step {restored.step}): {', '.join(names)}")
  start = time.perf_counter()
  geometry = frame_geometry(setup.dataset.get("source"), setup.dataset.get("dataset", "casme2"),
                            data, config.data.method, say)
  geometry_seconds = time.perf_counter() - start
  predict_step = jax.jit(steps.make_predict_step(setup.model, img_size))
  bs = config.eval_batch_size

  def predict(x):
    return np.concatenate([np.asarray(predict_step(params, x[i:i + bs]))
                           for i in range(0, len(x), bs)])

  settings = {"integrated_gradients": {"steps": steps_ig},
              "smoothgrad": {"samples": samples, "noise": noise, "seed": seed}}
  out_dir = workdir / "explain"
  out_dir.mkdir(exist_ok=True)
  result = {"run": str(workdir), "split": split, "checkpoint": restored.kind,
            "step": int(restored.step), "model": config.model.name,
            "method": config.data.method, "phase": config.data.phase, "img_size": img_size,
            "videos": int(data.num_videos), "frames": int(len(data)),
            "target": "each frame's true class", "image_units": "0-255 pixel values",
            "face_box": None if geometry is None else FACE_BOX[
                preprocess.Method.parse(config.data.method).value],
            "geometry_seconds": round(geometry_seconds, 2), "attributions": {}}
  arrays = {"labels": data.labels, "video_ids": data.video_ids,
            "frame_index": data.frame_index}
  if geometry is not None:
    arrays["boxes"], arrays["landmarks"] = geometry
  for name in names:
    t0 = time.perf_counter()
    maps = compute_maps(name, setup.model, params, data.images, data.labels, img_size,
                        settings.get(name, {}))
    t1 = time.perf_counter()
    entry = {"settings": settings.get(name, {}), "seconds": round(t1 - t0, 2)}
    if geometry is not None:
      share, chance = where.face_mass(np.nan_to_num(maps), np.nan_to_num(geometry[0]))
      share[~np.isfinite(geometry[0]).all(1)] = np.nan
      regions = where.region_mass(maps, geometry[1])
      entry["face_mass"] = _summary(share, chance, data.labels, classes)
      entry["region_mass"] = {k: _summary(m, c, data.labels, classes)
                              for k, (m, c) in regions.items()}
      chance = np.where(np.isfinite(share), chance, np.nan)
      entry["per_video"] = {"face_mass": per_video(share, data.video_ids),
                            "face_chance": per_video(chance, data.video_ids)}
      for k, (m, c) in regions.items():
        entry["per_video"][k] = per_video(m, data.video_ids)
        entry["per_video"][f"{k}_chance"] = per_video(c, data.video_ids)
    entry["deletion"] = where.deletion_curve(predict, data.images, maps, data.labels,
                                             data.video_ids, seed=seed)
    entry["deletion_seconds"] = round(time.perf_counter() - t1, 2)
    result["attributions"][name] = entry
    arrays[f"map_{name}"] = maps.astype(np.float16)
    say(f"  {name}: {t1 - t0:.1f} s" + (
        f", face mass {entry['face_mass']['all']['mass']:.3f} (chance "
        f"{entry['face_mass']['all']['chance']:.3f})" if geometry is not None
        and entry["face_mass"]["all"]["mass"] is not None else "")
        + f", deletion AUC {entry['deletion']['auc']:.3f} (random "
        f"{entry['deletion']['random_auc']:.3f})")
  result["seconds"] = round(time.perf_counter() - start, 2)
  np.savez_compressed(out_dir / "maps.npz", **arrays)
  (out_dir / "explain.json").write_text(json.dumps(result, indent=1))
  figure(out_dir / "explain.png", data, arrays, names, figure_videos, classes)
  say(f"wrote {out_dir / 'explain.json'}, maps.npz, explain.png")
  return result


def figure(path: pathlib.Path, data, arrays: dict, names, per_class: int,
           classes) -> None:
  """Rows: up to `per_class` videos of each class (their middle frame); columns: the
  image (face box in green), then each method's map over it."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = []
  for k in np.unique(data.labels):
    for vid in np.unique(data.video_ids[data.labels == k])[:per_class]:
      idx = np.flatnonzero(data.video_ids == vid)
      rows.append(int(idx[len(idx) // 2]))
  fig, axes = plt.subplots(len(rows), 1 + len(names), squeeze=False,
                           figsize=(2 * (1 + len(names)), 2 * len(rows)))
  for r, i in enumerate(rows):
    img = data.images[i]
    img = img[..., 0] if img.shape[-1] == 1 else img
    for c in range(1 + len(names)):
      ax = axes[r, c]
      ax.imshow(img, cmap="gray")
      ax.set_xticks([])
      ax.set_yticks([])
      if c:
        m = arrays[f"map_{names[c - 1]}"][i].astype(np.float32)
        ax.imshow(np.clip(m, 0, None), cmap="jet", alpha=0.5)
        if r == 0:
          ax.set_title(names[c - 1].replace("_", " "), fontsize=8)
      elif "boxes" in arrays and np.isfinite(arrays["boxes"][i]).all():
        l, t, rr, b = arrays["boxes"][i]
        ax.add_patch(plt.Rectangle((l, t), rr - l, b - t, fill=False, color="lime", lw=1))
      if c == 0:
        ax.set_ylabel(f"{classes[int(data.labels[i])]}\n{data.video_ids[i]}",
                      fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)

