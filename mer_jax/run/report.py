"""A split's frame probabilities -> video votes -> metrics, CIs and the run's report.

`summarise` turns one split's predictions into video- and frame-level metrics;
`write_report` writes a workdir's metrics.json, predictions_<split>.csv,
report.md and confusion_test.png; `finish_run` does that for a trained run
and prints its summary. Used by train, evaluate and tune.
"""
from __future__ import annotations

import csv
import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from mer_jax import metrics
from mer_jax.data.labels import EMOTIONS
from mer_jax.models import temporal

# The source dataset of examples that do not name one (a CASME II build's).
DEFAULT_DATASET = "casme2"
PREDICTION_FIELDS = ("video_id", "subject", "dataset", "label", "pred")
# A run with selection=test_fold_best_epoch: each epoch's test predictions, one CSV per
# epoch (EPOCH_FILE), for the study's measure of the leaky epoch choice (analysis/leak.py).
EPOCH_PREDICTIONS = "leaky_test_fold_best_epoch"
EPOCH_FILE = "test_epoch{epoch:04d}.csv"


def summarise(frame_probs: np.ndarray, labels: np.ndarray, video_ids: Sequence[str],
              subjects: Sequence[str], *, n_resamples: int = 1000, level: float = 0.95,
              seed: int = 0, datasets: Sequence[str] | None = None,
              classes: Sequence[str] = EMOTIONS) -> dict:
  """Video- and frame-level metrics of one split (per-frame labels, video ids, subjects).

  A video's label and subject are its frames'; its prediction is the frames'
  majority vote (ties by summed probability). The CI is the stratified
  bootstrap over videos (`metrics.bootstrap_ci`'s default: every class of the
  split stays in every resample). Each prediction row carries the subject and
  the source dataset (`datasets`, per frame; default casme2), so a study can
  cluster a pooled interval by subject, and report per dataset, from the run's
  own files. `classes`: the names of the labels' indices (the run's label scheme;
  mer_jax.run.sources), recorded in the result and every file written from it.
  """
  k = len(classes)
  frame_probs = np.asarray(frame_probs, np.float64)
  labels = np.asarray(labels, np.int64)
  video_ids = np.asarray(video_ids)
  subjects = np.asarray(subjects)
  datasets = np.full(len(labels), DEFAULT_DATASET) if datasets is None else np.asarray(datasets)
  vids, vpred = metrics.video_vote(frame_probs, video_ids)
  first = {v: i for i, v in reversed(list(enumerate(video_ids)))}
  rows = np.array([first[v] for v in vids], np.int64)
  vtrue, vsubj, vdata = labels[rows], subjects[rows], datasets[rows]
  video = metrics.classification_report(vtrue, vpred, k)
  video["macro_f1_ci"] = list(metrics.bootstrap_ci(
      vtrue, vpred, k, n_resamples=n_resamples, level=level, seed=seed))
  frame = metrics.classification_report(labels, frame_probs.argmax(-1), k)
  return {
      "classes": list(classes),
      "video": jsonable(video),
      "frame": jsonable(frame),
      "num_videos": int(len(vids)),
      "num_frames": int(len(labels)),
      "predictions": [{"video_id": str(v), "subject": str(s), "dataset": str(d),
                       "label": classes[t], "pred": classes[p]}
                      for v, s, d, t, p in zip(vids, vsubj, vdata, vtrue, vpred)],
  }


def jsonable(x):
  """`x` with numpy scalars and arrays as Python values and NaN as None (strict JSON)."""
  if isinstance(x, Mapping):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple, np.ndarray)):
    return [jsonable(v) for v in np.asarray(x, dtype=object).tolist()] if isinstance(
        x, np.ndarray) else [jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return None if math.isnan(float(x)) else float(x)
  if isinstance(x, (np.integer,)):
    return int(x)
  return x


def metrics_json(results: Mapping[str, dict], *, best_epoch: int | None,
                 config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
  """The workdir's metrics.json: the head's class names (`classes`), per split the
  video-level headline figures."""
  out = {"best_epoch": best_epoch, "config": config,
         "classes": next(iter(results.values()))["classes"] if results else list(EMOTIONS)}
  for split, r in results.items():
    v = r["video"]
    out[split] = {
        "macro_f1": v["macro_f1"], "macro_f1_ci": v["macro_f1_ci"], "uar": v["uar"],
        "accuracy": v["accuracy"],
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
  classes = next(iter(results.values()))["classes"] if results else EMOTIONS
  lines = [f"# {title}", ""]
  m = config.get("model", {}) if isinstance(config, Mapping) else {}
  d = config.get("data", {}) if isinstance(config, Mapping) else {}
  lines += [f"Model `{temporal.spec_of(m) if m else None}`, method {str(d.get('method', '')).upper()}, phase "
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
  lines += ["", "The CI is a percentile bootstrap over videos, resampled within each true class "
            "(every class of the split is in every resample)."]
  for split, r in results.items():
    note = zero_width_note(r)
    if note:
      lines += ["", f"**{split}**: {note}"]
  lines += ["", "## Frame-level results", "",
            "| split | frames | macro-F1 | UAR | accuracy |", "|---|---:|---:|---:|---:|"]
  for split, r in results.items():
    f = r["frame"]
    lines.append(f"| {split} | {r['num_frames']} | {_fmt(f['macro_f1'])} | {_fmt(f['uar'])} | "
                 f"{_fmt(f['accuracy'])} |")
  lines += ["", "## Per-class F1 (video level; — = class absent from the split)", "",
            "| split | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
  for split, r in results.items():
    lines.append(f"| {split} | " + " | ".join(_fmt(x, 3) for x in r["video"]["per_class_f1"])
                 + " |")
  if "test" in results:
    conf = results["test"]["video"]["confusion"]
    lines += ["", "## Test confusion matrix (rows: truth, columns: prediction)", "",
              "| | " + " | ".join(e[:4] for e in classes) + " |",
              "|---|" + "---:|" * len(classes)]
    for name, row in zip(classes, conf):
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


def plot_confusion(confusion, path: str | pathlib.Path, title: str = "Confusion (test videos)",
                   classes: Sequence[str] = EMOTIONS):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  conf = np.asarray(confusion, np.int64)
  fig, ax = plt.subplots(figsize=(5.5, 4.8), dpi=120)
  ax.imshow(conf, cmap="Blues")
  ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
  ax.set_yticks(range(len(classes)), classes)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  vmax = conf.max() if conf.size else 0
  for i in range(len(classes)):
    for j in range(len(classes)):
      if conf[i, j]:
        ax.text(j, i, int(conf[i, j]), ha="center", va="center",
                color="white" if conf[i, j] > vmax / 2 else "black")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def zero_width_note(result: Mapping[str, Any]) -> str:
  """What a split's macro-F1 interval of zero width means ('' when it has a width).

  Resampled within each class, a split whose classes hold one video each (a LOSO fold's
  subject, often), or whose every class is all right or all alike wrong, gives every
  resample the same score: the interval says nothing of the uncertainty, however exact it
  looks."""
  lo, hi = result["video"]["macro_f1_ci"]
  if lo is None or hi is None or lo != hi:
    return ""
  largest = max(result["video"]["support"], default=0)
  return (f"its interval has zero width ({result['num_videos']} videos, at most {largest} "
          "of a class): every resample, drawn within the classes, scored the same, which "
          "shows none of the uncertainty of so few videos. Pool such runs (a LOSO study's "
          "report pools its folds, with an interval clustered by subject).")


def write_report(workdir: str | pathlib.Path, results: Mapping[str, dict], *,
                 best_epoch: int | None, config: Mapping[str, Any],
                 history: Sequence[Mapping] = (), title: str | None = None,
                 extra: Mapping[str, Any] | None = None) -> pathlib.Path:
  """metrics.json, predictions_<split>.csv, report.md and confusion_test.png; returns report.md."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # Written whole, then renamed: a reader (a study's report, another process) never
  # sees half a file.
  tmp = workdir / "metrics.json.tmp"
  tmp.write_text(json.dumps(metrics_json(results, best_epoch=best_epoch, config=config,
                                         extra=extra), indent=2))
  tmp.replace(workdir / "metrics.json")
  for split, r in results.items():
    write_predictions(workdir / f"predictions_{split}.csv", r["predictions"])
  if "test" in results:
    plot_confusion(results["test"]["video"]["confusion"], workdir / "confusion_test.png",
                   classes=results["test"]["classes"])
  report = workdir / "report.md"
  report.write_text(report_markdown(results, title=title or workdir.name,
                                    best_epoch=best_epoch, config=config, history=history))
  return report


def write_predictions(path: pathlib.Path, rows: Sequence[Mapping]) -> None:
  """A predictions CSV (PREDICTION_FIELDS), written whole then renamed."""
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=PREDICTION_FIELDS)
    w.writeheader()
    w.writerows(rows)
  tmp.replace(path)


def write_epoch_predictions(workdir: pathlib.Path, epoch: int, result: dict) -> None:
  """One epoch's test predictions (`summarise`'s result) as
  WORKDIR/EPOCH_PREDICTIONS/EPOCH_FILE; a resumed run overwrites the epoch it redoes."""
  d = workdir / EPOCH_PREDICTIONS
  d.mkdir(exist_ok=True)
  write_predictions(d / EPOCH_FILE.format(epoch=epoch), result["predictions"])


def finish_run(workdir: pathlib.Path, c, results: dict, meta: dict,
               checkpoint: Mapping[str, Any], say=print, *, dataset: dict,
               train_videos: int) -> dict:
  """Writes a trained run's report (main process) and prints its summary;
  returns the metrics.json dict. `meta` is the run's latest (its whole
  history); `checkpoint` the evaluated one (checkpointing.Restored.record());
  `dataset` the build's fingerprint and dir (experiment.Setup.dataset);
  `train_videos` the number of videos it trained on (after data.train_fraction)."""
  from mer_jax.plumbing import runtime
  stop = meta["early_stopping"]
  best_epoch = stop["best_epoch"] + 1 if stop["best_epoch"] >= 0 else None
  extra = {"epochs_run": meta["epoch"], "history": meta["history"],
           "evaluated_checkpoint": dict(checkpoint), "dataset": dataset,
           "train_videos": int(train_videos)}
  if runtime.is_main_process():
    write_report(workdir, results, best_epoch=best_epoch, config=c.to_dict(),
                 history=meta["history"], extra=extra,
                 title=f"{temporal.spec_of(c.model)} {c.data.method.upper()} "
                       f"{c.data.phase.upper()} ({workdir.name})")
    t = results["test"]["video"]
    lo, hi = t["macro_f1_ci"]
    say("\n".join([
        "",
        f"== {temporal.spec_of(c.model)} {c.data.method.upper()} {c.data.phase.upper()} ==",
        f"best epoch {best_epoch} of {meta['epoch']} "
        f"(validation macro-F1 {stop['best']:.4f}); tested: the {checkpoint['kind']} "
        f"checkpoint, step {checkpoint['step']}",
        f"test (video level, {results['test']['num_videos']} videos): macro-F1 "
        f"{t['macro_f1']:.4f} [{lo:.4f}, {hi:.4f}], UAR {t['uar']:.4f}, "
        f"accuracy {t['accuracy']:.4f}"
        + (" (an interval of zero width: too few videos to resample; report.md)"
           if zero_width_note(results["test"]) else ""),
        f"report: {workdir / 'report.md'}",
    ]))
  # Every process returns what the main one wrote, without reading the file
  # (which the main process may still be writing).
  return json.loads(json.dumps(metrics_json(results, best_epoch=best_epoch,
                                            config=c.to_dict(), extra=extra)))
