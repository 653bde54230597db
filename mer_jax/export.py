r"""A trained run's best model as files that need no mer_jax to run.

  python -m mer_jax.export --workdir runs/pool_m36_mfs [--out DIR] [--batch N]
                           [--checkpoint latest] [--no_onnx]

Restores the run's best checkpoint (the latest if no best exists yet; the newest intact one
with --checkpoint latest) and writes into DIR (default WORKDIR/export):

- model.stablehlo: a `jax.export` artifact of the network (float32 NHWC images, normalised
  as below -> float32 logits of the labels in head order), for CPU and CUDA, any batch size
  (or only N with --batch N). `jax.export.deserialize(bytearray(data)).call(x)` runs it.
- model.onnx: the same network via jax2onnx (input "images", output "logits", batch "B"),
  when jax2onnx is installed and converts every op (ViT-B/32, Swin-B and PoolFormer all
  convert; one line says why when there is none).
- contract.json: what an image must go through first (the method's preprocessing of a
  frame, a bilinear antialiased resize to the input size, (x / 255 - mean) / std), the
  input's size, channels and dtype, the method, phase, model, label names in head order,
  the checkpoint exported (and the one the run's metrics.json evaluated), each file's
  sha256, and the largest logit difference to the Flax model on two random images.

`python -m mer_jax.predict --artifact DIR --frames CLIP` predicts a clip with it.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from mer_jax.run import artifact
from mer_jax.plumbing import cli
from mer_jax.plumbing.errors import UsageError


def export_run(workdir: str | pathlib.Path, out: str | pathlib.Path | None = None, *,
               batch: int | None = None, checkpoint: str = "best", onnx: bool = True,
               say=print) -> dict:
  """Writes a run's artifact(s) and contract into `out` (default WORKDIR/export);
  returns the contract."""
  import jax

  from mer_jax.run import experiment, input_pipeline, steps
  from mer_jax.plumbing import runtime
  from mer_jax.run import sources
  from mer_jax.data.phases import Phase
  from mer_jax.data.preprocess import Method

  if batch is not None and batch < 1:
    raise UsageError(f"--batch {batch}: a fixed batch must be >= 1 (leave it out for any batch).")
  workdir = pathlib.Path(workdir).absolute()
  out = pathlib.Path(out).absolute() if out else workdir / "export"
  config = experiment.load_run_config(workdir)
  config.model.remat = ""   # inference: nothing to recompute
  method, phase = Method.parse(config.data.method), Phase.parse(config.data.phase)
  chans, size = method.image_shape[-1], config.model.img_size
  model = steps.build_model(config, chans)
  restored = experiment.restore_state(workdir, config, model, chans, runtime.make_mesh(),
                                      checkpoint=checkpoint, say=say)
  params = jax.device_get(restored.state["params"])
  fn = artifact.logits_fn(model, params)
  metrics_file = workdir / "metrics.json"
  evaluated = (json.loads(metrics_file.read_text()).get("evaluated_checkpoint")
               if metrics_file.exists() else None)
  if evaluated and evaluated.get("step") != restored.step:
    say(f"note: the run's metrics.json evaluated the {evaluated['kind']} checkpoint of step "
        f"{evaluated['step']}; this exports step {restored.step}")

  stablehlo = artifact.export_logits(fn, size, chans, batch=batch)
  onnx_bytes, onnx_note = None, None
  if onnx:
    try:
      onnx_bytes = artifact.onnx_model(fn, size, chans, batch=batch, name=config.model.name)
    except artifact.OnnxSkipped as e:
      onnx_note = str(e)
      say(f"{config.model.name}: {e}")
  mean, std = input_pipeline.normalisation(chans)
  contract = {
      "model": config.model.name, "method": method.value, "phase": phase.value,
      "labels": list(sources.classes(config.data)), "output": "logits",
      "input": {"size": size, "channels": chans, "dtype": "float32", "layout": "NHWC",
                "batch": batch, "range": "uint8 values 0..255 before normalisation",
                "method_image_shape": list(method.image_shape),
                "resize": {"method": "bilinear", "antialias": True}},
      "normalisation": {"divide_by": 255.0, "mean": mean.tolist(), "std": std.tolist(),
                        "formula": "(x / divide_by - mean) / std, per channel"},
      "compute_dtype": config.model.dtype, "platforms": list(artifact.PLATFORMS),
      "checkpoint": dict(restored.record(), epoch=restored.meta["epoch"]),
      "evaluated_checkpoint": evaluated, "workdir": str(workdir),
      "jax_version": jax.__version__, "onnx_skipped": onnx_note,
      "parity": parity(fn, stablehlo, onnx_bytes, size, chans, batch),
  }
  contract = artifact.write(out, contract, stablehlo, onnx_bytes)
  files = ", ".join(f["file"] for f in contract["files"].values())
  say(f"Exported the {restored.kind} checkpoint (step {restored.step}) of {workdir} to "
      f"{out}: {files}, {artifact.CONTRACT}")
  return contract


def parity(fn, stablehlo: bytes, onnx_bytes: bytes | None, size: int, chans: int,
           batch: int | None) -> dict:
  """Largest |logit difference| of each artifact to the Flax function on 2 random images
  (normalised-range values), a check of the export itself."""
  import jax

  n = batch or 2
  x = np.random.default_rng(0).uniform(-2, 2, (n, size, size, chans)).astype(np.float32)
  ref = np.asarray(jax.jit(fn)(x))
  out = {"stablehlo_max_abs": float(np.abs(
      np.asarray(jax.export.deserialize(bytearray(stablehlo)).call(x)) - ref).max())}
  if onnx_bytes is not None:
    try:
      import onnxruntime
    except ImportError:
      return out
    sess = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out["onnxruntime_max_abs"] = float(np.abs(sess.run(None, {"images": x})[0] - ref).max())
  return out


def main(argv=None) -> int:
  p = cli.parser("mer_jax.export", __doc__)
  p.add_argument("--workdir", required=True, help="the run directory of mer_jax.train")
  p.add_argument("--out", help="where to write (default WORKDIR/export)")
  p.add_argument("--batch", type=int, default=None,
                 help="fix the batch size (default: any batch, a symbolic dimension)")
  p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  p.add_argument("--no_onnx", action="store_true", help="write no ONNX file")
  args = cli.parse(p, argv)
  export_run(args.workdir, args.out, batch=args.batch, checkpoint=args.checkpoint,
             onnx=not args.no_onnx)
  return 0


if __name__ == "__main__":
  cli.run(main)
