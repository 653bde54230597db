"""Preprocessing many videos on every core, in a deterministic order.

`preprocess_videos` runs mer_jax.data.preprocess's `preprocess_video` over
many videos, one process per core (one dlib detector each), and adds up their
reports. Output order and pixels do not depend on the number of processes.
"""
from __future__ import annotations

import collections
import collections.abc
import contextlib
import itertools
import multiprocessing
import os
import sys
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from mer_jax.data import faces
from mer_jax.data.videos import Video
from mer_jax.data.pixels import encode_png
from mer_jax.data.preprocess import (Method, PreprocessReport, VideoReport, frame_number,
                                     preprocess_video)

# What a worker process keeps between videos: its detector, landmarker and cache.
_WORKER: dict = {}


def _init_worker(cache_dir: str | None) -> None:
  # One detector per process: dlib's detector is built once and reused.
  _WORKER["detector"] = faces.FaceDetector()
  _WORKER["cache"] = faces.DetectionCache(cache_dir) if cache_dir else None
  _WORKER["landmarker"] = None  # made on first use (M2A, M3)


def _init_pool_worker(cache_dir: str | None) -> None:
  # One process per core already: OpenCV's own thread pool (M2A's warp, M3's
  # flow) would only oversubscribe the cores.
  import cv2
  cv2.setNumThreads(1)
  _init_worker(cache_dir)


def _run_one(job: tuple) -> tuple[list, VideoReport]:
  video, frames, context, method, skip, steady = job
  if method.aligns and _WORKER["landmarker"] is None:
    _WORKER["landmarker"] = faces.LandmarkDetector()
  return preprocess_video(video, frames, method, context_frames=context,
                          cache=_WORKER["cache"], detector=_WORKER["detector"],
                          landmarker=_WORKER["landmarker"],
                          skip_unreadable=skip, steady_box=steady)


def _run_encoded(job: tuple) -> tuple[list, VideoReport]:
  """`_run_one` with its images as PNG bytes, encoded here, in the worker."""
  images, report = _run_one(job)
  return [None if im is None else encode_png(im) for im in images], report


def available_cores() -> int:
  """The cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


@contextlib.contextmanager
def spawning_without_main():
  """Processes spawned inside skip re-running the parent's `__main__` module.

  A spawned process first imports the parent's main module, so that functions
  defined there can be unpickled; under `python -m mer_jax.train` that is JAX,
  Flax, optax, ... (5-8 s of CPU per worker, twice per pool on 2 cores). The
  workers here run functions of mer_jax.data only, so the main module is
  hidden while they start (multiprocessing reads `__spec__`/`__file__` then).
  """
  main = sys.modules.get("__main__")
  saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if main and k in main.__dict__}
  try:
    if "__spec__" in saved:
      main.__spec__ = None
    main and main.__dict__.pop("__file__", None)
    yield
  finally:
    if main:
      main.__dict__.update(saved)


# Pools that `shared_workers()` keeps open, by (workers, cache_dir); None outside it.
_SHARED_POOLS: dict | None = None


@contextlib.contextmanager
def shared_workers():
  """Inside it, `preprocess_videos` calls with the same workers and cache share one pool.

  Starting a pool costs about a second of every core (each worker imports
  OpenCV and dlib and loads dlib's detector): the TFDS build opens this around
  its three splits, so that it starts one pool instead of three.
  """
  global _SHARED_POOLS
  if _SHARED_POOLS is not None:  # nested: the outer one owns the pools
    yield
    return
  _SHARED_POOLS = {}
  try:
    yield
  finally:
    pools, _SHARED_POOLS = _SHARED_POOLS, None
    for pool in pools.values():
      pool.shutdown(cancel_futures=True)


def _worker_pool(workers: int, cache_dir: str | None):
  """(pool, whether the caller shuts it down): the shared pool if one is open, else a new one."""
  from concurrent.futures import ProcessPoolExecutor
  key = (workers, cache_dir)
  if _SHARED_POOLS is not None and key in _SHARED_POOLS:
    return _SHARED_POOLS[key], False
  # spawn, not fork: the caller (TFDS, JAX) runs threads, and forking a
  # threaded process can deadlock the child.
  pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_pool_worker, initargs=(cache_dir,))
  if _SHARED_POOLS is None:
    return pool, True
  _SHARED_POOLS[key] = pool
  return pool, False


def _forget_pool(pool) -> None:
  """Drops a broken pool from the shared ones (the next call starts a new one)."""
  if _SHARED_POOLS is not None:
    for key in [k for k, p in _SHARED_POOLS.items() if p is pool]:
      del _SHARED_POOLS[key]
      pool.shutdown(wait=False, cancel_futures=True)


class PreprocessRun(collections.abc.Iterator):
  """Iterator over (video, frame_index, image); `report` adds up each video as it is yielded.

  Order is deterministic: videos in the input order, frames in the order given
  (skipped frames left out), whatever the number of workers.
  """

  def __init__(self, jobs: list[tuple], method: Method, cache_dir: str | None, workers: int,
               encode: bool = False):
    self.report = PreprocessReport(method.value)
    self.workers = workers
    self._run = _run_encoded if encode else _run_one
    self._jobs = jobs
    self._cache_dir = cache_dir
    self._it = self._generate()

  def __next__(self) -> tuple[Video, int, np.ndarray]:
    return next(self._it)

  def close(self) -> None:
    """Stops the workers early (also done when the iterator is garbage collected)."""
    self._it.close()

  def _generate(self) -> Iterator[tuple[Video, int, np.ndarray]]:
    if self.workers == 1:
      _init_worker(self._cache_dir)
      yield from self._emit(map(self._run, self._jobs))
      return
    yield from self._emit(self._parallel())

  def _parallel(self) -> Iterator[tuple[list, VideoReport]]:
    """Results in input order, at most 2 videos per worker in flight (bounded memory)."""
    from concurrent.futures.process import BrokenProcessPool
    pool, owned = _worker_pool(self.workers, self._cache_dir)
    pending = collections.deque()
    jobs = iter(self._jobs)
    try:
      with spawning_without_main():  # the workers start in these first submits
        for job in itertools.islice(jobs, 2 * self.workers):
          pending.append(pool.submit(self._run, job))
      while pending:
        result = pending.popleft().result()
        for job in itertools.islice(jobs, 1):
          pending.append(pool.submit(self._run, job))
        yield result
    except BrokenProcessPool as e:
      _forget_pool(pool)
      raise RuntimeError(
          "a preprocessing worker died. If the script that called preprocess_videos has "
          "no `if __name__ == '__main__':` guard, add one (workers are started with "
          "'spawn', which re-imports the main module), or pass workers=1.") from e
    finally:
      for f in pending:
        f.cancel()
      if owned:
        pool.shutdown()

  def _emit(self, results) -> Iterator[tuple[Video, int, np.ndarray]]:
    for job, (images, report) in zip(self._jobs, results):
      video, frames = job[0], job[1]
      self.report.add(report)
      for n, image in zip(frames, images):
        if image is not None:
          yield video, n, image


ContextSpec = Mapping[str, Sequence[int]] | Callable[[Video], Sequence[int]] | None


def preprocess_videos(items: Sequence[tuple[Video, Sequence[int]]], method: "Method | str", *,
                      context: ContextSpec = None,
                      cache_dir: str | os.PathLike | None = None,
                      workers: int | None = None,
                      skip_unreadable: bool = False,
                      steady_box: bool = False,
                      encode: bool = False) -> PreprocessRun:
  """Preprocesses [(video, frame numbers or PhaseFrames)] on every core.

  context: the frames over which each video's face is chosen, besides its
    output frames -- {video_id: frames} or a function video -> frames (the
    builder passes the MFS frames, so AF's apex crop equals MFS's).
  cache_dir: the detection cache (default `faces.default_cache_dir()`); ""
    for none.
  workers: processes, one dlib detector each, OpenCV single-threaded in each
    (default: every available core,
    or this process alone for fewer than 4 videos per core; 1 runs in this
    process).
  encode: images come as PNG bytes (`pixels.encode_png`), encoded in the
    workers (what the TFDS builder stores), not as arrays.
  Returns a `PreprocessRun`: iterate it for (video, frame_index, image), then
  read `.report`. Errors name the file and the video (see `preprocess_video`).
  """
  method = Method.parse(method)
  jobs = []
  for video, frames in items:
    if context is None:
      ctx = ()
    elif callable(context):
      ctx = context(video)
    else:
      ctx = context.get(video.video_id, ())
    jobs.append((video, tuple(frame_number(f) for f in frames),
                 tuple(frame_number(f) for f in ctx), method, skip_unreadable, steady_box))
  if cache_dir is None:
    cache_dir = faces.default_cache_dir()
  cache_dir = str(cache_dir) if cache_dir != "" else None
  if cache_dir:
    faces.DetectionCache(cache_dir)  # fail here, with advice, if it cannot be created
  if workers is None:
    # A worker process takes seconds to start (it re-imports the caller's
    # modules): not worth it for a handful of videos.
    workers = available_cores() if len(jobs) >= 4 * available_cores() else 1
  workers = max(1, min(workers, len(jobs) or 1))
  return PreprocessRun(jobs, method, cache_dir, workers, encode)
