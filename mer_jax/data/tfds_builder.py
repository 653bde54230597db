"""The TFDS builder of every dataset: one config per method x phase (m1_af ... m3_mfs).

`builder_class(dataset)` is the builder of one dataset of mer_jax.data.DATASETS
(casme2, samm, smic_hs, casme3): it reads the dataset's folder through its
reader (`mer_jax.data.load`), splits and preprocesses through mer_jax.data,
and writes. `python -m mer_jax.data.build` (mer_jax.data.build) builds with it
directly, so Python code needs no path to the datasets/ folder. The
registered builder `datasets/casme2/casme2_dataset_builder.py` subclasses
CASME II's, for TFDS's own tools (`tfds build datasets/casme2 --config m2_mfs
--manual_dir DIR`, where apache-beam is installed). The MEGC 2019 composite
is not a build of its own: its examples are those of the casme2, samm and
smic_hs builds, which carry their source (mer_jax.run.input_pipeline joins them).

Each example is one preprocessed frame:
  image         M1 384x384x3 / M2, M2A 224x224x1 / M3 224x224x3 (flow u, v,
                magnitude) uint8 (PNG, lossless; encoded by the preprocessing
                workers, pixels.encode_png). SAMM's frames are gray: its M1
                images are gray in three channels (quality.json's source_colour)
  label         ClassLabel over the dataset's native labels (labels.NATIVE;
                CASME II's: EMOTIONS); a run maps them through its label scheme
  dataset       the source dataset ("casme2", "samm", ...)
  video_id      Video.video_id ("subNN/EPxx_yy[f]", "samm/006/006_1_2");
  subject       Video.subject_id ("subNN", "samm/006"): unique across datasets
  frame_index   absolute frame number (the N of imgN.jpg)
  role          onset / apex / offset / window (see mer_jax.data.phases)
  onset, apex, offset, apex_estimated, action_units   the video's coding
Splits `train`, `validation`, `test` are the paper's stratified 201/26/28
video split (its proportions on another dataset's videos). For
leave-one-subject-out, read all three splits and select by `video_id` with
`mer_jax.data.splits.loso_folds`.

Files are array_record (random access through `tfds.data_source`, no
TensorFlow at read time). The build also writes `quality.json` (the paper's
Table I figures and what the preprocessing did: borrowed detections,
fallback videos, skipped frames; the dataset and its source colour) and
`fingerprint.json` (what it was built from: mer_jax.data.fingerprint) into
the dataset directory. A failed build leaves no dataset directory (TFDS
builds in a temporary one and renames it only on success).

Build options the `tfds` CLI cannot pass are read from the environment:
MER_JAX_DETECTION_CACHE (detection cache; "" = off), MER_JAX_WORKERS
(processes; default every core), MER_JAX_SKIP_UNREADABLE=1 (skip and report
unreadable frames instead of stopping), MER_JAX_SHEET (coding sheet path; not
SMIC-HS, whose labels are its folders).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import functools
import importlib

import numpy as np
import tensorflow_datasets as tfds

from mer_jax import data as datasets
from mer_jax.data import (dataset_configs, fingerprint, labels, phases, preprocess, runner,
                          splits, videos)
from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method
from mer_jax.plumbing.errors import UsageError

VERSION = tfds.core.Version("1.3.0")


# Each dataset's home page and citation (the TFDS DatasetInfo's).
HOMEPAGE = {"casme2": "http://casme.psych.ac.cn/casme/e2",
            "samm": "http://www2.docm.mmu.ac.uk/STAFF/m.yap/dataset.php",
            "smic_hs": "https://www.oulu.fi/en/university/faculties-and-units/"
                       "faculty-information-technology-and-electrical-engineering/"
                       "center-machine-vision-and-signal-analysis",
            "casme3": "http://casme.psych.ac.cn/casme/e4"}
CITATION = {
    "casme2": """@article{yan2014casme2,
  title={CASME II: An improved spontaneous micro-expression database and the baseline evaluation},
  author={Yan, Wen-Jing and Li, Xiaobai and Wang, Su-Jing and Zhao, Guoying and Liu, Yong-Jin
          and Chen, Yu-Hsin and Fu, Xiaolan},
  journal={PLoS ONE}, volume={9}, number={1}, pages={e86041}, year={2014}}""",
    "samm": """@article{davison2018samm,
  title={SAMM: A Spontaneous Micro-Facial Movement Dataset},
  author={Davison, Adrian K. and Lansley, Cliff and Costen, Nicholas and Tan, Kevin and Yap, Moi Hoon},
  journal={IEEE Transactions on Affective Computing}, volume={9}, number={1}, pages={116--129},
  year={2018}}""",
    "smic_hs": """@inproceedings{li2013smic,
  title={A Spontaneous Micro-expression Database: Inducement, Collection and Baseline},
  author={Li, Xiaobai and Pfister, Tomas and Huang, Xiaohua and Zhao, Guoying and Pietik{\\"a}inen, Matti},
  booktitle={IEEE FG}, year={2013}}""",
    "casme3": """@article{li2022casme3,
  title={CAS(ME)$^3$: A Third Generation Facial Spontaneous Micro-Expression Database with Depth
         Information and High Ecological Validity},
  author={Li, Jingting and Dong, Zizhao and Lu, Shaoyuan and Wang, Su-Jing and Yan, Wen-Jing and
          Ma, Yinhuan and Liu, Ye and Huang, Changbing and Fu, Xiaolan},
  journal={IEEE TPAMI}, year={2022}}""",
}


def manual_download_instructions(dataset: str) -> str:
  """What to request and where to put it (the reader module's MANUAL_DOWNLOAD_INSTRUCTIONS)."""
  return importlib.import_module(f"mer_jax.data.{dataset}").MANUAL_DOWNLOAD_INSTRUCTIONS


def read_source(dataset: str, root, sheet: str | None = None) -> videos.VideoSet:
  """The dataset at `root` through its reader; `sheet` for the sheet-coded sets."""
  return datasets.load(dataset, root, **({"sheet": sheet} if dataset != "smic_hs" else {}))


def source_sheet(dataset: str, root, sheet: str | None = None):
  """The coding sheet a build of `dataset` from `root` reads (None: SMIC-HS, folder labels)."""
  if dataset == "smic_hs":
    return None
  if sheet:
    return sheet
  if dataset == "casme2":  # found without listing every frame
    from mer_jax.data import casme2
    return casme2.find_sheet(root)
  return read_source(dataset, root).sheet


@dataclasses.dataclass
class MerConfig(tfds.core.BuilderConfig):
  method: str = Method.M2.value
  phase: str = Phase.MFS.value


def _configs():
  out = []
  for name in dataset_configs.CONFIG_NAMES:
    method, phase = dataset_configs.parse_config_name(name)
    out.append(MerConfig(name=name, method=method.value, phase=phase.value, version=VERSION,
                            description=dataset_configs.description(name)))
  return out


def _env_flag(name: str) -> bool:
  return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


class MerBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One dataset's micro-expression frames, preprocessed by M1/M2/M2A/M3, per AF/KFS/MFS
  phase; `builder_class(dataset)` gives a dataset's subclass (its `name` is the dataset)."""

  name = "casme2"
  VERSION = VERSION
  RELEASE_NOTES = {
      "1.0.0": "The paper's configs m{1,2}_{af,kfs,mfs}; paper split 201/26/28.",
      "1.1.0": "Configs m2a_* (aligned faces) and m3_* (optical flow); M1 resized with "
               "OpenCV's area filter (pixels within 1-2 grey levels of 1.0.0's bicubic); "
               "M2 unchanged.",
      "1.2.0": "M2A and M3 landmark-fallback videos crop every frame with the video's one "
               "reference box (was each frame's own box, whose jitter showed as flow); "
               "other videos and M1, M2 unchanged.",
      "1.3.0": "Every dataset (casme2, samm, smic_hs, casme3) from its reader; examples carry "
               "their `dataset`, `subject` is the dataset-prefixed subject id, `label` the "
               "dataset's native label.",
  }
  BUILDER_CONFIGS = _configs()
  DEFAULT_CONFIG_NAME = "m2_mfs"
  MANUAL_DOWNLOAD_INSTRUCTIONS = manual_download_instructions("casme2")

  def __init__(self, *, detection_cache: str | None = None, workers: int | None = None,
               skip_unreadable: bool | None = None, sheet: str | None = None, **kwargs):
    if kwargs.get("file_format") is None:  # random access for tfds.data_source
      kwargs["file_format"] = "array_record"
    super().__init__(**kwargs)
    env_cache = os.environ.get("MER_JAX_DETECTION_CACHE")
    self._detection_cache = detection_cache if detection_cache is not None else env_cache
    self._workers = workers or int(os.environ.get("MER_JAX_WORKERS", "0") or 0) or None
    self._skip_unreadable = (_env_flag("MER_JAX_SKIP_UNREADABLE") if skip_unreadable is None
                             else skip_unreadable)
    self._sheet = sheet or os.environ.get("MER_JAX_SHEET") or None
    self._reports: dict[str, tuple[preprocess.PreprocessReport, float]] = {}  # + seconds
    self._build_info: dict = {}
    self._fingerprint: dict = {}

  def source_fingerprint(self, manual_dir) -> dict:
    """The fingerprint (mer_jax.data.fingerprint) of this builder's build from `manual_dir`."""
    return fingerprint.of_source(manual_dir, source_sheet(self.name, manual_dir, self._sheet),
                                 str(VERSION), dataset=self.name)

  def _info(self) -> tfds.core.DatasetInfo:
    shape = Method.parse(self.builder_config.method).image_shape
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format="png"),
            "label": tfds.features.ClassLabel(names=labels.NATIVE[self.name]),
            "dataset": tfds.features.Text(),
            "video_id": tfds.features.Text(),
            "subject": tfds.features.Text(),
            "frame_index": np.int32,
            "role": tfds.features.Text(),
            "onset": np.int32,
            "apex": np.int32,
            "offset": np.int32,
            "apex_estimated": np.bool_,
            "action_units": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # examples in (video, frame) order; readers shuffle
        homepage=HOMEPAGE[self.name],
        citation=CITATION[self.name],
    )

  def _split_generators(self, dl_manager):
    manual_dir = dl_manager.manual_dir  # TFDS raises with the instructions when missing
    index = read_source(self.name, manual_dir, self._sheet)  # its errors say what to do
    self._fingerprint = self.source_fingerprint(manual_dir)
    split = splits.paper_split(index.videos)
    by_id = {v.video_id: v for v in index.videos}
    self._build_info = {
        "dataset": self.name,
        "source_colour": "gray" if videos.GRAY[self.name] else "rgb",
        "manual_dir": str(manual_dir), "sheet": index.sheet.name if index.sheet else None,
        "videos": len(index.videos), "notes": index.notes,
        "split_videos": {k: len(v) for k, v in split.items()},
        "split_class_counts": {k: splits.class_counts(v, index.videos) for k, v in split.items()},
    }
    return {name: self._generate_examples(name, [by_id[i] for i in ids])
            for name, ids in split.items()}

  def _generate_examples(self, split_name: str, videos: list):
    cfg = self.builder_config
    # M3 (flow from the onset) leaves out the onset frame itself (preprocess.phase_frames).
    items = [(v, preprocess.phase_frames(v, cfg.phase, cfg.method)) for v in videos]
    roles = {v.video_id: {f.frame_index: f.role for f in frames} for v, frames in items}
    # Faces are chosen over the MFS frames for every phase, so a frame's crop
    # is the same in all three phases (and the detection cache serves every config).
    run = runner.preprocess_videos(
        items, cfg.method,
        context=lambda v: [f.frame_index for f in phases.select_frames(v, Phase.MFS)],
        cache_dir=self._detection_cache, workers=self._workers,
        skip_unreadable=self._skip_unreadable,
        # PNG-encoded in the worker processes: TFDS's one writing process
        # would otherwise spend most of an M1 build encoding (it stores bytes
        # as given; the `image` feature decodes them as before).
        encode=True)
    start = time.perf_counter()
    for video, n, png in run:
      yield f"{video.video_id}/{n:06d}", {
          "image": png,
          "label": labels.NATIVE[self.name].index(video.emotion),
          "dataset": video.dataset,
          "video_id": video.video_id,
          "subject": video.subject_id,
          "frame_index": n,
          "role": roles[video.video_id][n],
          "onset": video.onset,
          "apex": video.apex,
          "offset": video.offset,
          "apex_estimated": video.apex_estimated,
          "action_units": video.action_units,
      }
    self._reports[split_name] = (run.report, time.perf_counter() - start)

  def _download_and_prepare(self, dl_manager, download_config=None, **kwargs):
    start = time.perf_counter()
    with runner.shared_workers():  # one pool of worker processes for the three splits
      super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config,
                                    **kwargs)
    quality = quality_dict(self._reports, self.builder_config)
    quality.update(self._build_info, build_seconds=time.perf_counter() - start)
    # self.data_dir is TFDS's temporary directory here: quality.json and
    # fingerprint.json land together with the dataset, or not at all.
    with open(os.path.join(self.data_dir, "quality.json"), "w") as f:
      json.dump(quality, f, indent=1)
    with open(os.path.join(self.data_dir, fingerprint.FILE), "w") as f:
      json.dump(fingerprint.stamped(self._fingerprint), f, indent=1)


@functools.cache
def builder_class(dataset: str) -> type:
  """The builder of `dataset` (one of mer_jax.data.DATASETS): MerBuilder named after it."""
  if dataset not in datasets.DATASETS:
    raise UsageError(f"unknown dataset {dataset!r}; valid: {', '.join(datasets.DATASETS)}")
  if dataset == MerBuilder.name:
    return MerBuilder
  return type(f"{dataset.title().replace('_', '')}Builder", (MerBuilder,), {
      "name": dataset, "__module__": __name__,
      "MANUAL_DOWNLOAD_INSTRUCTIONS": manual_download_instructions(dataset),
      "__doc__": f"{dataset}: {MerBuilder.__doc__.splitlines()[0]}"}, skip_registration=True)


def quality_dict(reports: dict, cfg) -> dict:
  """Per-split and overall figures of a build (the paper's Table I and the fallbacks)
  from {split: (PreprocessReport, seconds)}."""
  total = preprocess.PreprocessReport(cfg.method)
  per_split = {}
  for name, (r, seconds) in reports.items():
    per_split[name] = r.as_dict()
    per_split[name]["seconds"] = seconds
    total.merge(r)
  out = {"config": cfg.name, "method": cfg.method, "phase": cfg.phase,
         "definitions": {
             "face_centring_rate": (
                 "fraction of output images in which the centre of the frame's own chosen "
                 "dlib face box, mapped into the output image, lies within "
                 f"{preprocess.CENTRED_WITHIN:.0%} of the output side of the image centre; "
                 "frames without their own detection count as not centred"),
             "information_density": "output pixels x channels",
             "fallback_videos": "videos without any face detection: centre crops",
             "landmark_fallback_videos": (
                 "M2A/M3 videos whose onset face has no plausible landmarks: M2's crops "
                 "instead of aligned faces")},
         **total.as_dict(), "splits": per_split}
  if Method.parse(cfg.method).is_flow:
    from mer_jax.data import flow
    out["flow"] = {"algorithm": "dis", "scale_px": flow.SCALE, "encoding": (
        "u, v: 128 + 127 * clip(flow, -scale, scale) / scale; magnitude: 255 * "
        "min(|flow|, scale) / scale (mer_jax.data.flow.decode_flow inverts u, v)")}
  return out
