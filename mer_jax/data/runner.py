"""Preprocessing many videos on every core, in a deterministic order.

`preprocess_videos` runs mer_jax.data.preprocess's `preprocess_video` over
many videos, one process per core (one dlib detector each), and adds up their
reports. Output order and pixels do not depend on the number of processes.
"""
from __future__ import annotations

import collections
import collections.abc
import itertools
import multiprocessing
import os
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from mer_jax.data import faces
from mer_jax.data.casme2 import Video
from mer_jax.data.preprocess import (Method, PreprocessReport, VideoReport, frame_number,
                                     preprocess_video)

# What a worker process keeps between videos: its detector and cache.
_WORKER: dict = {}


def _init_worker(cache_dir: str | None) -> None:
  # One detector per process: dlib's detector is built once and reused.
  _WORKER["detector"] = faces.FaceDetector()
  _WORKER["cache"] = faces.DetectionCache(cache_dir) if cache_dir else None


def _run_one(job: tuple) -> tuple[list, VideoReport]:
  video, frames, context, method, skip, steady = job
  return preprocess_video(video, frames, method, context_frames=context,
                          cache=_WORKER["cache"], detector=_WORKER["detector"],
                          skip_unreadable=skip, steady_box=steady)


def available_cores() -> int:
  """The cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


class PreprocessRun(collections.abc.Iterator):
  """Iterator over (video, frame_index, image); `report` adds up each video as it is yielded.

  Order is deterministic: videos in the input order, frames in the order given
  (skipped frames left out), whatever the number of workers.
  """

  def __init__(self, jobs: list[tuple], method: Method, cache_dir: str | None, workers: int):
    self.report = PreprocessReport(method.value)
    self.workers = workers
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
      yield from self._emit(map(_run_one, self._jobs))
      return
    yield from self._emit(self._parallel())

  def _parallel(self) -> Iterator[tuple[list, VideoReport]]:
    """Results in input order, at most 2 videos per worker in flight (bounded memory)."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    # spawn, not fork: the caller (TFDS, JAX) runs threads, and forking a
    # threaded process can deadlock the child.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(self._cache_dir,)) as pool:
      pending = collections.deque()
      jobs = iter(self._jobs)
      try:
        for job in itertools.islice(jobs, 2 * self.workers):
          pending.append(pool.submit(_run_one, job))
        while pending:
          result = pending.popleft().result()
          for job in itertools.islice(jobs, 1):
            pending.append(pool.submit(_run_one, job))
          yield result
      except BrokenProcessPool as e:
        raise RuntimeError(
            "a preprocessing worker died. If the script that called preprocess_videos has "
            "no `if __name__ == '__main__':` guard, add one (workers are started with "
            "'spawn', which re-imports the main module), or pass workers=1.") from e
      finally:
        for f in pending:
          f.cancel()

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
                      steady_box: bool = False) -> PreprocessRun:
  """Preprocesses [(video, frame numbers or PhaseFrames)] on every core.

  context: the frames over which each video's face is chosen, besides its
    output frames -- {video_id: frames} or a function video -> frames (the
    builder passes the MFS frames, so AF's apex crop equals MFS's).
  cache_dir: the detection cache (default `faces.default_cache_dir()`); ""
    for none.
  workers: processes, one dlib detector each (default: every available core,
    or this process alone for fewer than 4 videos per core; 1 runs in this
    process).
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
  return PreprocessRun(jobs, method, cache_dir, workers)
