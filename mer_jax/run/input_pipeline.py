"""From a built CASME II config to global device batches, and on-device augmentation.

Reading: `tfds.data_source` (array_record, random access, no TensorFlow at
read time) decoded once into numpy (a CASME II config is at most ~1.5 GB of
uint8 pixels) with a thread pool. Splits are the TFDS splits (the paper's
split), or another holdout (`data.split`, `data.split_seed`) or a
leave-one-subject-out fold drawn from all of them by `video_id`.

Feeding: the order of every epoch is a permutation drawn from (seed, epoch),
so it is the same whatever the number of processes, and a run resumed at
(epoch, step) sees exactly the batches it would have seen. Each global batch
is cut into per-process slices (process p takes rows [p*B/P, (p+1)*B/P)),
which `runtime.to_global` assembles into one array sharded over the mesh's
`data` axis. A background thread prepares the next batches while the device
runs (`Prefetcher`), and measures how long the step loop waits for input.

Augmentation runs inside the jitted step (`augment`): one affine warp per
image (random resized crop by area, rotation, horizontal flip) sampled
bilinearly straight to the model's input size, then brightness and contrast
jitter, then ImageNet normalisation. Faces suit mild geometry: no vertical
flip, small angles. Flow images (M3, `is_flow`) have their vectors moved with
their pixels: u negated by the flip (mer_jax.data.flow.hflip's rule) and u, v
scaled by the crop's zoom (flow.scale_vectors). Evaluation uses
`preprocess_eval` (resize + normalise).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import pathlib
import queue
import threading
import time
from typing import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.data import flow, labels, splits
from mer_jax.data.videos import Video
from mer_jax.plumbing.errors import UsageError
from mer_jax.run import report

# ImageNet statistics (timm's IMAGENET_DEFAULT_MEAN/STD); a 1-channel input
# uses their means, as timm does for in_chans=1.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class SplitData:
  """One split in memory: images uint8 [N, H, W, C] and per-frame metadata."""
  images: np.ndarray
  labels: np.ndarray           # int32 [N]
  video_ids: np.ndarray        # str [N]
  subjects: np.ndarray         # str [N]
  frame_index: np.ndarray      # int32 [N]
  datasets: np.ndarray         # str [N]: each example's source dataset (a composite's vary)

  def __len__(self):
    return len(self.labels)

  def take(self, idx) -> "SplitData":
    return SplitData(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))

  @property
  def num_videos(self) -> int:
    return len(np.unique(self.video_ids))


def _decode_source(src, workers: int = 8) -> SplitData:
  n = len(src)
  if n == 0:
    raise ValueError("empty split")
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    examples = list(pool.map(src.__getitem__, range(n)))
  s = lambda k: np.array([e[k].decode() if isinstance(e[k], bytes) else str(e[k])
                          for e in examples])
  return SplitData(images=np.stack([e["image"] for e in examples]),
                   labels=np.array([e["label"] for e in examples], np.int32),
                   video_ids=s("video_id"), subjects=s("subject"),
                   frame_index=np.array([e["frame_index"] for e in examples], np.int32),
                   datasets=s("dataset") if "dataset" in examples[0]
                   else np.full(n, report.DEFAULT_DATASET))


def _concat(parts: Sequence[SplitData]) -> SplitData:
  return SplitData(*(np.concatenate([getattr(p, f.name) for p in parts])
                     for f in dataclasses.fields(SplitData)))


def _videos_of(data: SplitData, classes: Sequence[str]) -> list[Video]:
  """Minimal Video records (enough for the split functions) from the examples: the label
  is the class of the run's scheme (`classes`), the subject the dataset's folder name."""
  out = {}
  for vid, subj, label, d in zip(data.video_ids, data.subjects, data.labels, data.datasets):
    if vid not in out:
      out[vid] = Video(dataset=d, subject=subj.removeprefix(f"{d}/"),
                       episode=vid.removeprefix(f"{subj}/"), onset=0, apex=0, offset=0,
                       emotion=classes[int(label)], frames={})
  return list(out.values())


def relabel(data: SplitData, native: Sequence[str], scheme: labels.Scheme) -> SplitData:
  """`data` (labels: indices into its dataset's `native` labels) with the scheme's class
  indices, and without the frames of videos the scheme drops."""
  table = {}
  for d in np.unique(data.datasets):
    for k, e in enumerate(native):
      c = scheme.class_of(Video(dataset=str(d), subject="", episode="", onset=0, apex=0,
                                offset=0, emotion=e, frames={}))
      table[(str(d), k)] = -1 if c is None else scheme.classes.index(c)
  new = np.array([table[(str(d), int(y))] for d, y in zip(data.datasets, data.labels)],
                 np.int32)
  keep = new >= 0
  out = data.take(keep)
  out.labels = new[keep]
  return out


def read_build(dataset_dir: str, scheme: labels.Scheme | None = None) -> dict[str, SplitData]:
  """A build's three splits decoded, their labels mapped to `scheme` (None: as built)."""
  parts, native = _decoded(dataset_dir, _stamp(dataset_dir))
  if scheme is None:
    return dict(parts)
  return {k: relabel(v, native, scheme) for k, v in parts.items()}


def load_splits(dataset_dir: str | Mapping[str, str], protocol: str = "paper", fold: int = -1,
                split: str = "video", split_seed: int = splits.PAPER_SEED,
                scheme: labels.Scheme | None = None, test_datasets: Sequence[str] = ()
                ) -> dict[str, SplitData]:
  """{"train", "validation", "test"} -> SplitData from a built dataset directory, or from
  several ({dataset: directory}: a composite's or a cross-dataset run's builds, joined),
  labels mapped to `scheme` (None: as built; mer_jax.run.sources.scheme) and the videos it
  drops left out.

  protocol "paper": `splits.holdout(videos, split, split_seed)`; the paper's
  own ("video", 0) is the builds' TFDS splits, read as they are, any other
  is drawn from all the videos by id. "loso": fold `fold` (index
  in subject-id order; subjects are dataset-prefixed ids) of `splits.loso_folds`, whose
  train, validation and test subjects are disjoint (split and split_seed stay at their
  defaults: splits.check_split). "cross": test is every video of the `test_datasets`,
  train and validation (splits.validation_split: whole subjects) the other builds'
  videos. Bad arguments raise splits.SplitError.
  """
  if protocol not in ("paper", "loso", "cross"):
    raise splits.SplitError(f"Unknown data.protocol {protocol!r}; valid: paper, loso, cross")
  splits.check_split(protocol, split, split_seed)
  dirs = {"": dataset_dir} if isinstance(dataset_dir, str) else dict(dataset_dir)
  built = {name: read_build(d, scheme) for name, d in dirs.items()}
  parts = {k: _concat([b[k] for b in built.values()]) for k in SPLITS}
  if protocol == "paper" and (split, split_seed) == ("video", splits.PAPER_SEED):
    return parts  # each build wrote paper_split(videos, PAPER_SEED)
  classes = scheme.classes if scheme is not None else labels.EMOTIONS
  if protocol == "cross":
    train = _concat([built[n][k] for n in built if n not in test_datasets for k in SPLITS])
    test = _concat([built[n][k] for n in test_datasets for k in SPLITS])
    chosen = splits.validation_split(_videos_of(train, classes))
    return {"train": train.take(np.isin(train.video_ids, np.array(chosen["train"]))),
            "validation": train.take(np.isin(train.video_ids, np.array(chosen["validation"]))),
            "test": test}
  every = _concat([parts[k] for k in SPLITS])
  videos = _videos_of(every, classes)
  if protocol == "paper":
    chosen = splits.holdout(videos, split, split_seed)
  else:
    folds = _loso_folds(tuple((v.dataset, v.subject, v.episode, v.emotion) for v in videos))
    if not 0 <= fold < len(folds):
      raise splits.SplitError(f"data.fold must be in 0..{len(folds) - 1} (one per subject: "
                       f"{', '.join(f.subject for f in folds)}), got {fold}")
    chosen = folds[fold].splits()
  return {k: every.take(np.isin(every.video_ids, np.array(chosen[k]))) for k in SPLITS}


def subsample_train(data: dict[str, SplitData], fraction: float, seed: int,
                    classes: Sequence[str] = labels.EMOTIONS) -> dict[str, SplitData]:
  """`data` with its training split cut to `splits.train_subsample` (data.train_fraction,
  drawn by the run's `seed`; `classes` name its labels); validation and test as they were."""
  if fraction == 1:
    return data
  train = data["train"]
  keep = splits.train_subsample(_videos_of(train, classes), fraction, seed)
  return dict(data, train=train.take(np.isin(train.video_ids, np.array(keep))))


@functools.lru_cache(maxsize=4)
def _loso_folds(videos: tuple[tuple[str, str, str, str], ...]) -> list[splits.Fold]:
  """splits.loso_folds of videos given as (dataset, subject, episode, emotion), once per
  process: each fold of a study draws every fold's validation subjects (0.2-0.5 s)."""
  return splits.loso_folds([Video(dataset=d, subject=s, episode=e, onset=0, apex=0, offset=0,
                                  emotion=m, frames={}) for d, s, e, m in videos])


# Decoded builds a process keeps, newest last: a study's folds and cells read the same
# build again and again. Bounded by bytes, not by count: one real M1 MFS build of CASME II
# is ~1.5 GB of frames, a composite's three M2 builds ~0.4 GB together. The newest build is
# always kept; older ones go, oldest first, while the kept ones exceed DECODED_BYTES.
DECODED_BYTES = 4 << 30
_DECODED: dict[tuple, tuple[dict[str, SplitData], list[str]]] = {}


def decoded_builds() -> list[str]:
  """The build directories this process holds decoded, oldest first."""
  return [d for d, _ in _DECODED]


def _decoded(dataset_dir: str, stamp) -> tuple[dict[str, SplitData], list[str]]:
  """Every split of a build decoded, and its native label names, kept (see DECODED_BYTES;
  callers take copies, never write into them); `stamp` tells a rebuilt directory apart."""
  key = (dataset_dir, stamp)
  if key in _DECODED:
    _DECODED[key] = _DECODED.pop(key)   # now the newest
  else:
    import tensorflow_datasets as tfds
    b = tfds.builder_from_directory(dataset_dir)
    sources = b.as_data_source()
    _DECODED[key] = ({k: _decode_source(sources[k]) for k in SPLITS},
                     b.info.features["label"].names)
  size = lambda v: sum(part.images.nbytes for part in v[0].values())  # noqa: E731
  while len(_DECODED) > 1 and sum(map(size, _DECODED.values())) > DECODED_BYTES:
    del _DECODED[next(iter(_DECODED))]
  return _DECODED[key]


def _stamp(dataset_dir: str) -> tuple:
  info = pathlib.Path(dataset_dir) / "dataset_info.json"
  st = info.stat()
  return st.st_mtime_ns, st.st_size


def loso_subjects(dataset_dir: str | Mapping[str, str],
                  scheme: labels.Scheme | None = None) -> list[str]:
  """The held-out subject of each LOSO fold, in fold order: the subject ids (dataset-
  prefixed but CASME II's) of the build(s) with a video `scheme` keeps."""
  dirs = [dataset_dir] if isinstance(dataset_dir, str) else list(dataset_dir.values())
  out = set()
  for d in dirs:
    for part in read_build(d, scheme).values():
      out |= set(part.subjects.tolist())
  return sorted(out)


# --- feeding -----------------------------------------------------------------


def epoch_order(n: int, epoch: int, seed: int, labels: np.ndarray | None = None,
                class_balanced: bool = False) -> np.ndarray:
  """Indices of one training epoch, a function of (seed, epoch) only.

  class_balanced: n draws with replacement, each class equally likely
  (within a class, frames uniformly).
  """
  rng = np.random.default_rng([seed, epoch, 0x4D4552])
  if not class_balanced:
    return rng.permutation(n)
  classes = np.unique(labels)
  per_class = {c: np.flatnonzero(labels == c) for c in classes}
  picks = rng.choice(classes, size=n)
  return np.array([rng.choice(per_class[c]) for c in picks], np.int64)


def steps_per_epoch(n: int, global_batch: int) -> int:
  """Training drops the last incomplete batch (static shapes); at least one step."""
  return max(1, n // global_batch)


def process_slice(global_batch: int) -> slice:
  p, count = jax.process_index(), jax.process_count()
  if global_batch % count:
    raise UsageError(f"batch_size {global_batch} is not divisible by the {count} processes")
  per = global_batch // count
  return slice(p * per, (p + 1) * per)


def epoch_indices(data: SplitData, global_batch: int, *, seed: int, epoch: int,
                  class_balanced: bool = False) -> np.ndarray:
  """[steps, global_batch] rows of each global training batch of `epoch`."""
  order = epoch_order(len(data), epoch, seed, data.labels, class_balanced)
  if len(order) < global_batch:  # tiny sets: repeat the permutation to fill one batch
    order = np.resize(order, global_batch)
  n = steps_per_epoch(len(order), global_batch)
  return order[:n * global_batch].reshape(n, global_batch)


def train_batches(data: SplitData, global_batch: int, *, seed: int, epoch: int,
                  start_step: int = 0, class_balanced: bool = False) -> Iterator[dict]:
  """This process's share of each global training batch of `epoch`, from `start_step`."""
  order = epoch_indices(data, global_batch, seed=seed, epoch=epoch,
                        class_balanced=class_balanced)
  mine = process_slice(global_batch)
  for step in range(start_step, len(order)):
    idx = order[step][mine]
    yield {"image": data.images[idx], "label": data.labels[idx],
           "mask": np.ones(len(idx), np.float32)}


def eval_batches(data: SplitData, global_batch: int) -> Iterator[dict]:
  """Every example once, in order; the last batch padded (mask 0) to full size."""
  mine = process_slice(global_batch)
  n = len(data)
  for start in range(0, n, global_batch):
    idx = np.arange(start, start + global_batch)
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)[mine]
    yield {"image": data.images[idx], "label": data.labels[idx], "mask": mask[mine]}


class Prefetcher:
  """Runs a batch iterator (and the host-to-device copy) `size` batches ahead
  in a thread; `wait_seconds` is the time the consumer spent blocked on it.

  A context manager: leaving the block, normally or by an exception (a NaN
  loss, an interrupt, a pruned trial), stops the thread, closes the source
  iterator and drops the batches it holds, so that nothing keeps the
  training split alive.
  """

  _END = object()

  def __init__(self, it: Iterator, put, size: int = 2):
    self._q: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._put = put
    self.wait_seconds = 0.0
    self._error = None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(it,), daemon=True,
                                    name="mer_jax-prefetch")
    self._thread.start()

  def _run(self, it):
    try:
      for batch in it:
        if self._stop.is_set():
          break
        self._q.put(self._put(batch))
    except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
      self._error = e
    finally:
      if hasattr(it, "close"):  # a generator: run its finally now, in this thread
        it.close()
      self._q.put(self._END)

  def __iter__(self):
    return self

  def __next__(self):
    start = time.perf_counter()
    item = self._q.get()
    self.wait_seconds += time.perf_counter() - start
    if item is self._END:
      if self._error is not None:
        raise self._error
      raise StopIteration
    return item

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self):
    """Stops the thread (it ends after the batch in hand) and empties the queue."""
    self._stop.set()
    while self._thread.is_alive():
      try:
        self._q.get(timeout=0.1)
      except queue.Empty:
        pass
    while not self._q.empty():
      self._q.get_nowait()
    self._error = None


# --- on device ---------------------------------------------------------------


def normalisation(in_chans: int) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) per channel of `normalise`: ImageNet's, or their means for one
  channel (an exported model's contract states them)."""
  mean = np.array(IMAGENET_MEAN if in_chans == 3 else [np.mean(IMAGENET_MEAN)], np.float32)
  std = np.array(IMAGENET_STD if in_chans == 3 else [np.mean(IMAGENET_STD)], np.float32)
  return mean, std


def normalise(images, in_chans: int):
  """uint8-range images -> ImageNet-normalised float32."""
  mean, std = normalisation(in_chans)
  return (images / 255.0 - mean) / std


def preprocess_eval(images, img_size: int):
  """uint8 [B, H, W, C] -> normalised float32 [B, img_size, img_size, C]."""
  x = images.astype(jnp.float32)
  b, h, w, c = x.shape
  if (h, w) != (img_size, img_size):
    x = jax.image.resize(x, (b, img_size, img_size, c), "bilinear", antialias=True)
  return normalise(x, c)


def _warp(image, matrix, out_size: int):
  """Bilinear sample of `image` [H, W, C] at matrix @ (y, x, 1) of each output pixel."""
  h, w, _ = image.shape
  ys, xs = jnp.meshgrid(jnp.arange(out_size, dtype=jnp.float32) + 0.5,
                        jnp.arange(out_size, dtype=jnp.float32) + 0.5, indexing="ij")
  coords = jnp.stack([ys.ravel(), xs.ravel(), jnp.ones(out_size * out_size)])
  src = matrix @ coords - 0.5  # pixel centres -> array indices
  def one(channel):
    return jax.scipy.ndimage.map_coordinates(channel, [src[0], src[1]], order=1, mode="nearest")
  out = jax.vmap(one, in_axes=-1, out_axes=-1)(image)
  return out.reshape(out_size, out_size, image.shape[-1])


def _affine(rng, h: int, w: int, out_size: int, cfg):
  """Output pixel (y, x) -> source pixel, for a random crop/rotation/flip."""
  k_scale, k_ratio, k_rot, k_flip, k_ty, k_tx = jax.random.split(rng, 6)
  area = jax.random.uniform(k_scale, (), minval=cfg.scale_min, maxval=1.0)
  log_ratio = jax.random.uniform(k_ratio, (), minval=np.log(3 / 4), maxval=np.log(4 / 3))
  ratio = jnp.exp(log_ratio) if cfg.scale_min < 1.0 else 1.0
  ch = jnp.minimum(jnp.sqrt(area / ratio), 1.0) * h  # crop height/width in source pixels
  cw = jnp.minimum(jnp.sqrt(area * ratio), 1.0) * w
  cy = h / 2 + jax.random.uniform(k_ty, (), minval=-1, maxval=1) * (h - ch) / 2
  cx = w / 2 + jax.random.uniform(k_tx, (), minval=-1, maxval=1) * (w - cw) / 2
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-cfg.rotate_deg,
                                         maxval=cfg.rotate_deg))
  flip = jnp.where(cfg.flip & (jax.random.uniform(k_flip) < 0.5), -1.0, 1.0)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  sy, sx = ch / out_size, cw / out_size * flip
  c0 = out_size / 2
  # source = centre + R @ diag(sy, sx) @ (out - c0)
  m = jnp.array([[cos * sy, -sin * sx, 0.0], [sin * sy, cos * sx, 0.0]])
  offset = jnp.array([cy, cx]) - m[:, :2] @ jnp.array([c0, c0])
  return m.at[:, 2].set(offset)


def augment(rng, images, cfg, img_size: int, *, is_flow: bool):
  """uint8 [B, H, W, C] -> augmented, normalised float32 [B, img_size, img_size, C].

  cfg: the config's `aug` (enabled, scale_min, rotate_deg, flip, brightness,
  contrast). Disabled, it is `preprocess_eval`. is_flow: the images are M3 flow
  codes; their vectors follow the flip and the crop's zoom (rotation,
  brightness and contrast must be off for them: steps.check_method_fields).
  """
  if not cfg.enabled:
    return preprocess_eval(images, img_size)
  b, h, w, c = images.shape
  x = images.astype(jnp.float32)
  keys = jax.random.split(rng, b)

  def one(key, image):
    k_geo, k_b, k_c = jax.random.split(key, 3)
    matrix = _affine(k_geo, h, w, img_size, cfg)
    out = _warp(image, matrix, img_size)
    if is_flow:
      # Codes are source pixels, the unit `preprocess_eval` keeps when it resizes the
      # whole image by img_size / side. The crop shows 1 / matrix[i, i] output pixels
      # per source pixel (diagonal without rotation): relative to the whole image,
      # a zoom of (side / img_size) / matrix[i, i] >= 1, negative when flipped.
      out = flow.scale_vectors(out, (w / img_size) / matrix[1, 1],
                               (h / img_size) / matrix[0, 0])
    bright = jax.random.uniform(k_b, (), minval=-cfg.brightness, maxval=cfg.brightness)
    contrast = 1.0 + jax.random.uniform(k_c, (), minval=-cfg.contrast, maxval=cfg.contrast)
    mean = jnp.mean(out)
    out = (out - mean) * contrast + mean + bright * 255.0
    return jnp.clip(out, 0.0, 255.0)

  return normalise(jax.vmap(one)(keys, x), c)
