"""Whole videos for a temporal head (`model.temporal` gru | mean): one example = one video.

A split's frames (input_pipeline.SplitData, as loaded) become each video's
frames in frame order (`frame_index`), padded at the end to the longest video
of the split with a frame mask (`VideoSplit`). Batches are of videos: the same
epoch order, per-process slices and padding as frame batches
(input_pipeline.train_batches / eval_batches run on the video rows), each row
expanded to its frames [B, T, H, W, C] and `frame_mask` [B, T]. Augmentation
draws one transform per video, applied to all its frames alike, so that the
augmentation adds no motion between frames. Evaluation gives one prediction
per video (no vote); the class weights of the loss count videos.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mer_jax.data.phases import Phase
from mer_jax.models import temporal
from mer_jax.plumbing import runtime
from mer_jax.plumbing.errors import UsageError
from mer_jax.run import input_pipeline, report, sources


def is_temporal(config) -> bool:
  """Whether a config's model is a temporal head (runs from before it have no field)."""
  return config.model.get("temporal", temporal.NONE) != temporal.NONE


def check_config(config) -> None:
  """A bad model.temporal, or a temporal head on AF (one frame per video) -> UsageError."""
  head = config.model.get("temporal", temporal.NONE)
  if head not in temporal.HEADS:
    raise UsageError(f"Unknown model.temporal {head!r}; valid: {', '.join(temporal.HEADS)}")
  if head != temporal.NONE and Phase.parse(config.data.phase) is Phase.AF:
    raise UsageError(f"model.temporal={head} needs a frame sequence, and AF has one frame per "
                     "video; use data.phase=kfs or mfs, or model.temporal=none")
  if config.model.get("freeze_backbone", False) and head == temporal.NONE:
    raise UsageError("model.freeze_backbone=True needs a temporal head to train; set "
                     "model.temporal=gru or mean")


@dataclasses.dataclass
class VideoSplit:
  """One split as videos: `index` [V, T] rows of `frames` in frame order (padding repeats
  a video's last frame, `frame_mask` 0), and per video its label, id and subject."""
  frames: input_pipeline.SplitData
  index: np.ndarray          # int64 [V, T]
  frame_mask: np.ndarray     # float32 [V, T]
  labels: np.ndarray         # int32 [V]
  video_ids: np.ndarray      # str [V]
  subjects: np.ndarray       # str [V]
  datasets: np.ndarray       # str [V]: each video's source dataset

  def __len__(self):
    return len(self.labels)

  @property
  def num_videos(self) -> int:
    return len(self.labels)

  @property
  def rows(self) -> input_pipeline.SplitData:
    """The videos as one-row examples whose `images` are their row numbers: what the
    frame feeders order, slice and pad."""
    return input_pipeline.SplitData(np.arange(len(self)), self.labels, self.video_ids,
                                    self.subjects, np.zeros(len(self), np.int32),
                                    self.datasets)


def video_split(data: input_pipeline.SplitData) -> VideoSplit:
  """`data`'s videos (sorted by id), each one's frames ordered by frame_index."""
  vids, inverse = np.unique(data.video_ids, return_inverse=True)
  per_video = [np.flatnonzero(inverse == v) for v in range(len(vids))]
  per_video = [rows[np.argsort(data.frame_index[rows], kind="stable")] for rows in per_video]
  t = max(len(r) for r in per_video)
  index = np.stack([np.concatenate([r, np.full(t - len(r), r[-1])]) for r in per_video])
  mask = (np.arange(t)[None, :] < np.array([len(r) for r in per_video])[:, None])
  first = np.array([r[0] for r in per_video])
  return VideoSplit(data, index.astype(np.int64), mask.astype(np.float32),
                    data.labels[first], vids, data.subjects[first], data.datasets[first])


def video_splits(data: dict) -> dict:
  """{split: VideoSplit} of {split: SplitData}."""
  return {k: video_split(v) for k, v in data.items()}


def _expand(videos: VideoSplit, batch: dict) -> dict:
  rows = batch.pop("image")
  return dict(batch, image=videos.frames.images[videos.index[rows]],
              frame_mask=videos.frame_mask[rows])


def train_batches(videos: VideoSplit, global_batch: int, **kwargs):
  """input_pipeline.train_batches of videos (global_batch videos a step)."""
  for batch in input_pipeline.train_batches(videos.rows, global_batch, **kwargs):
    yield _expand(videos, batch)


def eval_batches(videos: VideoSplit, global_batch: int):
  """input_pipeline.eval_batches of videos: every video once, the last batch padded."""
  for batch in input_pipeline.eval_batches(videos.rows, global_batch):
    yield _expand(videos, batch)


# --- on device ---------------------------------------------------------------


def augment_videos(rng, frames, cfg, img_size: int, *, is_flow: bool):
  """uint8 [B, T, H, W, C] -> augmented, normalised float32 [B, T, S, S, C]: one draw of
  input_pipeline.augment per video, the same for each of its frames."""
  def video(key, clip):
    return jax.vmap(lambda f: input_pipeline.augment(key, f[None], cfg, img_size,
                                                     is_flow=is_flow)[0])(clip)
  return jax.vmap(video)(jax.random.split(rng, frames.shape[0]), frames)


def preprocess_eval_videos(frames, img_size: int):
  """uint8 [B, T, H, W, C] -> input_pipeline.preprocess_eval of every frame."""
  b, t = frames.shape[:2]
  x = input_pipeline.preprocess_eval(frames.reshape((b * t,) + frames.shape[2:]), img_size)
  return x.reshape((b, t) + x.shape[1:])


def make_predict_step(model, img_size: int):
  """(params, uint8 frames [B, T, H, W, C], frame_mask [B, T]) -> class probabilities."""
  def predict(params, frames, frame_mask):
    logits = model.apply({"params": params}, preprocess_eval_videos(frames, img_size),
                         frame_mask, train=False)
    return jax.nn.softmax(logits.astype(np.float32), axis=-1)
  return predict


def jit_predict(model, img_size: int, mesh):
  return jax.jit(make_predict_step(model, img_size), out_shardings=runtime.replicated(mesh))


def predict_videos(videos: VideoSplit, params, predict_fn, global_batch: int,
                   mesh) -> np.ndarray:
  """Class probabilities [V, 7] of every video (all processes get all)."""
  out = []
  for batch in eval_batches(videos, global_batch):
    g = runtime.to_global({"image": batch["image"], "frame_mask": batch["frame_mask"]}, mesh)
    out.append(np.asarray(predict_fn(params, g["image"], g["frame_mask"])))
  return np.concatenate(out)[:len(videos)]


def summarise(videos: VideoSplit, probs: np.ndarray, config) -> dict:
  """report.summarise with one prediction per video (a vote of one: no vote). The run's
  unit is the video, so its frame-level block is the video level; num_frames counts the
  frames the head saw."""
  out = report.summarise(probs, videos.labels, videos.video_ids, videos.subjects,
                         n_resamples=config.bootstrap_resamples, level=config.ci_level,
                         seed=config.seed, datasets=videos.datasets,
                         classes=sources.classes(config.data))
  out["num_frames"] = int(videos.frame_mask.sum())
  return out
