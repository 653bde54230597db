r"""Frame probabilities -> video votes -> metrics, CIs and the run's report.

  python -m mer_jax.evaluate --workdir runs/pool_m36_mfs

re-evaluates a finished or interrupted run: it restores the best checkpoint
(the latest if no best exists yet) and rewrites metrics.json,
predictions_*.csv, report.md and confusion_test.png in the workdir.
"""
from __future__ import annotations

import csv
import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from mer_jax import metrics
from mer_jax.data.casme2 import EMOTIONS

NUM_CLASSES = len(EMOTIONS)


def summarise(frame_probs: np.ndarray, labels: np.ndarray, video_ids: Sequence[str], *,
              n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
  """Video- and frame-level metrics of one split.

  A video's label is its frames' label; its prediction is the frames' majority
  vote (ties by summed probability). The CI resamples videos.
  """
  frame_probs = np.asarray(frame_probs, np.float64)
  labels = np.asarray(labels, np.int64)
  video_ids = np.asarray(video_ids)
  vids, vpred = metrics.video_vote(frame_probs, video_ids)
  first = {v: i for i, v in reversed(list(enumerate(video_ids)))}
  vtrue = np.array([labels[first[v]] for v in vids], np.int64)
  video = metrics.classification_report(vtrue, vpred, NUM_CLASSES)
  video["macro_f1_ci"] = list(metrics.bootstrap_ci(
      vtrue, vpred, NUM_CLASSES, n_resamples=n_resamples, level=level, seed=seed))
  frame = metrics.classification_report(labels, frame_probs.argmax(-1), NUM_CLASSES)
  return {
      "video": _jsonable(video),
      "frame": _jsonable(frame),
      "num_videos": int(len(vids)),
      "num_frames": int(len(labels)),
      "predictions": [{"video_id": str(v), "label": EMOTIONS[t], "pred": EMOTIONS[p]}
                      for v, t, p in zip(vids, vtrue, vpred)],
  }


def _jsonable(x):
  if isinstance(x, Mapping):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple, np.ndarray)):
    return [_jsonable(v) for v in np.asarray(x, dtype=object).tolist()] if isinstance(
        x, np.ndarray) else [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return None if math.isnan(float(x)) else float(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  return x


def metrics_json(results: Mapping[str, dict], *, best_epoch: int | None,
                 config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
  """The workdir's metrics.json: per split the video-level headline figures."""
  out = {"best_epoch": best_epoch, "config": config}
  for split, r in results.items():
    v = r["video"]
    out[split] = {
        "macro_f1": v["macro_f1"], "macro_f1_ci": v["macro_f1_ci"], "uar": v["uar"],
        "uf1": v.get("uf1", v["macro_f1"]), "accuracy": v["accuracy"],
        "per_class_f1": v["per_class_f1"], "confusion": v["confusion"],
        "num_videos": r["num_videos"], "num_frames": r["num_frames"],
        "frame": {k: r["frame"][k] for k in ("macro_f1", "uar", "accuracy")},
    }
  out.update(extra or {})
  return out


def _fmt(x, digits=4):
  return "—" if x is None else f"{x:.{digits}f}"


def report_markdown(results: Mapping[str, dict], *, title: str, best_epoch: int | None,
                    config: Mapping[str, Any], history: Sequence[Mapping] = ()) -> str:
  """The paper-style tables of one run."""
  lines = [f"# {title}", ""]
  m = config.get("model", {}) if isinstance(config, Mapping) else {}
  d = config.get("data", {}) if isinstance(config, Mapping) else {}
  lines += [f"Model `{m.get('name')}`, method {str(d.get('method', '')).upper()}, phase "
            f"{str(d.get('phase', '')).upper()}, protocol {d.get('protocol', 'paper')}; "
            f"best epoch {best_epoch}.", ""]
  lines += ["## Video-level results (the paper's unit)", "",
            "| split | videos | macro-F1 | 95% CI | UAR | accuracy |",
            "|---|---:|---:|---|---:|---:|"]
  for split, r in results.items():
    v = r["video"]
    lo, hi = v["macro_f1_ci"]
    lines.append(f"| {split} | {r['num_videos']} | {_fmt(v['macro_f1'])} | "
                 f"[{_fmt(lo)}, {_fmt(hi)}] | {_fmt(v['uar'])} | {_fmt(v['accuracy'])} |")
  lines += ["", "## Frame-level results", "",
            "| split | frames | macro-F1 | UAR | accuracy |", "|---|---:|---:|---:|---:|"]
  for split, r in results.items():
    f = r["frame"]
    lines.append(f"| {split} | {r['num_frames']} | {_fmt(f['macro_f1'])} | {_fmt(f['uar'])} | "
                 f"{_fmt(f['accuracy'])} |")
  lines += ["", "## Per-class F1 (video level; — = class absent from the split)", "",
            "| split | " + " | ".join(EMOTIONS) + " |", "|---|" + "---:|" * NUM_CLASSES]
  for split, r in results.items():
    lines.append(f"| {split} | " + " | ".join(_fmt(x, 3) for x in r["video"]["per_class_f1"])
                 + " |")
  if "test" in results:
    conf = results["test"]["video"]["confusion"]
    lines += ["", "## Test confusion matrix (rows: truth, columns: prediction)", "",
              "| | " + " | ".join(e[:4] for e in EMOTIONS) + " |",
              "|---|" + "---:|" * NUM_CLASSES]
    for name, row in zip(EMOTIONS, conf):
      lines.append(f"| {name} | " + " | ".join(str(int(c)) for c in row) + " |")
  if history:
    lines += ["", "## Training history", "",
              "| epoch | train loss | val macro-F1 | val UAR | seconds |",
              "|---:|---:|---:|---:|---:|"]
    for h in history:
      lines.append(f"| {h['epoch']} | {_fmt(h.get('train_loss'))} | "
                   f"{_fmt(h.get('val_macro_f1'))} | {_fmt(h.get('val_uar'))} | "
                   f"{h.get('seconds', 0):.1f} |")
  return "\n".join(lines) + "\n"


def plot_confusion(confusion, path: str | pathlib.Path, title: str = "Confusion (test videos)"):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  conf = np.asarray(confusion, np.int64)
  fig, ax = plt.subplots(figsize=(5.5, 4.8), dpi=120)
  ax.imshow(conf, cmap="Blues")
  ax.set_xticks(range(NUM_CLASSES), EMOTIONS, rotation=45, ha="right")
  ax.set_yticks(range(NUM_CLASSES), EMOTIONS)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  vmax = conf.max() if conf.size else 0
  for i in range(NUM_CLASSES):
    for j in range(NUM_CLASSES):
      if conf[i, j]:
        ax.text(j, i, int(conf[i, j]), ha="center", va="center",
                color="white" if conf[i, j] > vmax / 2 else "black")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_report(workdir: str | pathlib.Path, results: Mapping[str, dict], *,
                 best_epoch: int | None, config: Mapping[str, Any],
                 history: Sequence[Mapping] = (), title: str | None = None,
                 extra: Mapping[str, Any] | None = None) -> pathlib.Path:
  """metrics.json, predictions_<split>.csv, report.md and confusion_test.png; returns report.md."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with open(workdir / "metrics.json", "w") as f:
    json.dump(metrics_json(results, best_epoch=best_epoch, config=config, extra=extra), f,
              indent=2)
  for split, r in results.items():
    with open(workdir / f"predictions_{split}.csv", "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=["video_id", "label", "pred"])
      w.writeheader()
      w.writerows(r["predictions"])
  if "test" in results:
    plot_confusion(results["test"]["video"]["confusion"], workdir / "confusion_test.png")
  report = workdir / "report.md"
  report.write_text(report_markdown(results, title=title or workdir.name,
                                    best_epoch=best_epoch, config=config, history=history))
  return report


def load_config(workdir: str | pathlib.Path):
  """The ConfigDict a run was trained with (WORKDIR/config.json)."""
  import ml_collections
  cfg_path = pathlib.Path(workdir).absolute() / "config.json"
  if not cfg_path.exists():
    raise FileNotFoundError(f"{cfg_path} not found: is {cfg_path.parent} a mer_jax run "
                            "directory (the --workdir of python -m mer_jax.train)?")
  return ml_collections.ConfigDict(json.loads(cfg_path.read_text()))


def restore_state(workdir: str | pathlib.Path, config, model, in_chans: int, mesh, *,
                  checkpoint: str = "best"):
  """(state, meta, which) of a run's best checkpoint (else its latest).

  `which` says which one was restored; raises FileNotFoundError when the run
  saved none yet. Needs only the model, not the dataset.
  """
  from mer_jax import checkpointing, runtime, train

  workdir = pathlib.Path(workdir).absolute()
  ckpt = checkpointing.Checkpoints(workdir, config.checkpoint_keep)
  abstract = train.abstract_state(model, config, in_chans, train.make_optimizer(config, 1),
                                  runtime.replicated(mesh))
  try:
    restored = ckpt.restore_best(abstract) if checkpoint == "best" else None
    which = "best"
    if restored is None:
      restored, which = ckpt.restore_latest(abstract), "latest"
    if restored is None:
      raise FileNotFoundError(f"No checkpoint in {workdir / 'checkpoints'}: the run saved "
                              "nothing yet (it saves at the end of each epoch).")
  finally:
    ckpt.close()
  state, meta = restored
  return state, meta, which


def evaluate_workdir(workdir: str | pathlib.Path, *, checkpoint: str = "best") -> dict:
  """Restores a run's best (else latest) checkpoint and rewrites its report."""
  from mer_jax import train

  workdir = pathlib.Path(workdir).absolute()
  config = load_config(workdir)
  setup = train.make_setup(config, log=lambda *a: None)
  state, meta, which = restore_state(workdir, config, setup.model, setup.in_chans, setup.mesh,
                                     checkpoint=checkpoint)
  predict_fn = train.jit_predict(setup)
  results = {s: train.evaluate_split(setup, state["params"], s, predict_fn)
             for s in ("validation", "test")}
  print(f"Evaluating the {which} checkpoint (step {int(state['step'])}, epoch {meta['epoch']})")
  return train._report(workdir, config, results, meta)  # noqa: SLF001


def main(argv=None) -> int:
  import argparse
  import sys

  ap = argparse.ArgumentParser(prog="python -m mer_jax.evaluate", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  args = ap.parse_args(argv)
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  try:
    evaluate_workdir(args.workdir, checkpoint=args.checkpoint)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
