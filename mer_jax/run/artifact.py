"""A trained model that leaves the project: its logits as a StableHLO artifact, the
preprocessing contract beside it, and an ONNX copy.

`export_logits` serialises a model's inference function with `jax.export` (float32 NHWC
images, normalised as the contract says -> float32 logits), lowered for CPU and CUDA, with a
symbolic batch unless one is fixed. `onnx_model` converts the same function with jax2onnx,
which is optional (without it only the StableHLO artifact is written). `load` reads an export
directory back; its `Artifact` predicts with JAX and numpy alone (no Flax, no model code), as
`python -m mer_jax.predict --artifact` does.

ONNX: all three families (ViT-B/32, Swin-B, PoolFormer) convert with jax2onnx 0.17.1 once
the models' one platform-dependent op is resolved (`layers.materialize`, a fusion boundary
for XLA's CPU compiler and the identity elsewhere; jax2onnx has no rule for its
`platform_index`). A model with an op jax2onnx cannot convert gets no ONNX file, and
`OnnxSkipped` names the op.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.plumbing.errors import NotFound, UserError

CONTRACT = "contract.json"
STABLEHLO = "model.stablehlo"
ONNX = "model.onnx"
FORMAT = "mer_jax.export/1"
PLATFORMS = ("cpu", "cuda")


class OnnxSkipped(Exception):
  """No ONNX file: the message says why in one line."""


def logits_fn(model, params):
  """images -> float32 logits of a Flax model in inference mode, its params closed over
  (the artifact carries them as constants)."""
  def logits(images):
    return model.apply({"params": params}, images, train=False).astype(jnp.float32)
  return logits


def input_spec(size: int, chans: int, batch: int | None = None) -> jax.ShapeDtypeStruct:
  """The artifact's input: float32 [batch, size, size, chans]; batch None is symbolic."""
  b = jax.export.symbolic_shape("b")[0] if batch is None else batch
  return jax.ShapeDtypeStruct((b, size, size, chans), jnp.float32)


def export_logits(fn, size: int, chans: int, *, batch: int | None = None,
                  platforms=PLATFORMS) -> bytes:
  """`fn`'s serialised `jax.export` artifact (StableHLO and its calling convention)."""
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(input_spec(size, chans, batch))
  return bytes(exported.serialize())


def resolve_platform_dependent(fn):
  """`fn` with every `lax.platform_dependent` replaced by its default branch: a traced
  function for converters that have no rule for `platform_index` (jax2onnx). It traces `fn`
  and evaluates its jaxpr again, taking the default branch of each platform switch and
  inlining nested jits (where such switches hide)."""
  from jax.extend import core

  def evaluate(jaxpr, consts, args):
    env = {}

    def read(v):
      return v.val if isinstance(v, core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
      invals = [read(v) for v in eqn.invars]
      name = eqn.primitive.name
      if name == "platform_index":
        defaults = [i for i, p in enumerate(eqn.params["platforms"]) if p is None]
        if not defaults:
          raise OnnxSkipped(f"a platform switch without a default branch "
                            f"({eqn.params['platforms']})")
        outs = [defaults[0]]
      elif name == "cond" and isinstance(invals[0], int):   # the switch on that index
        branch = eqn.params["branches"][invals[0]]
        outs = evaluate(branch.jaxpr, branch.consts, invals[1:])
      elif name in ("pjit", "jit"):
        inner = eqn.params["jaxpr"]
        outs = evaluate(inner.jaxpr, inner.consts, invals)
      else:
        with eqn.ctx.manager:
          outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        if not eqn.primitive.multiple_results:
          outs = [outs]
      env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]

  def resolved(x):
    closed = jax.make_jaxpr(fn)(x)
    return evaluate(closed.jaxpr, closed.consts, [x])[0]

  return resolved


def onnx_model(fn, size: int, chans: int, *, batch: int | None = None,
               name: str = "mer_jax") -> bytes:
  """`fn` as a serialised ONNX model (input "images", output "logits"; batch "B" when
  symbolic). Raises OnnxSkipped without jax2onnx, or naming an op it cannot convert."""
  try:
    import jax2onnx
  except ImportError:
    raise OnnxSkipped("no ONNX file: jax2onnx is not installed (pip install jax2onnx "
                      "onnxruntime)") from None
  # Its plugin discovery logs a traceback for each optional library missing (equinox, dm_pix).
  logging.getLogger("jax2onnx").setLevel(logging.ERROR)
  try:
    proto = jax2onnx.to_onnx(resolve_platform_dependent(fn),
                             inputs=[("B" if batch is None else batch, size, size, chans)],
                             model_name=name, input_names=["images"], output_names=["logits"])
  except NotImplementedError as e:
    op = re.search(r"primitive '([^']+)'", str(e))
    if op is None:
      raise
    raise OnnxSkipped(f"no ONNX file: jax2onnx {jax2onnx_version()} cannot convert the op "
                      f"{op.group(1)!r}") from None
  return proto.SerializeToString()


def jax2onnx_version() -> str:
  from importlib import metadata
  return metadata.version("jax2onnx")


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def write(out: str | pathlib.Path, contract: dict, stablehlo: bytes,
          onnx: bytes | None) -> dict:
  """Writes the artifact(s) and contract.json (with each file's name and sha256) into
  `out`; removes an ONNX file of an earlier export when there is none now. Returns the
  contract as written."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  files = {"stablehlo": {"file": STABLEHLO, "sha256": sha256(stablehlo)}}
  (out / STABLEHLO).write_bytes(stablehlo)
  if onnx is None:
    (out / ONNX).unlink(missing_ok=True)
  else:
    (out / ONNX).write_bytes(onnx)
    files["onnx"] = {"file": ONNX, "sha256": sha256(onnx)}
  contract = dict(contract, format=FORMAT, files=files)
  tmp = out / f"{CONTRACT}.tmp"
  tmp.write_text(json.dumps(contract, indent=1))
  tmp.replace(out / CONTRACT)
  return contract


def preprocess(images, contract: dict):
  """uint8-range images [B, H, W, C] -> the artifact's input, as the contract says:
  resized (when H, W differ from its size), then (x / divide_by - mean) / std."""
  spec, norm = contract["input"], contract["normalisation"]
  x = jnp.asarray(images).astype(jnp.float32)
  b, h, w, c = x.shape
  if c != spec["channels"]:
    raise UserError(f"images have {c} channel(s); the exported model takes "
                    f"{spec['channels']}.")
  size = spec["size"]
  if (h, w) != (size, size):
    x = jax.image.resize(x, (b, size, size, c), spec["resize"]["method"],
                         antialias=spec["resize"]["antialias"])
  mean, std = (np.asarray(norm[k], np.float32) for k in ("mean", "std"))
  return (x / norm["divide_by"] - mean) / std


@dataclasses.dataclass
class Artifact:
  """An export directory read back: its contract and the deserialised StableHLO model."""
  directory: pathlib.Path
  contract: dict
  exported: jax.export.Exported

  def probabilities(self, images, chunk: int = 32) -> np.ndarray:
    """Class probabilities [N, classes] of uint8-range images [N, H, W, C], through the
    contract's preprocessing (in chunks; a fixed-batch artifact gets padded chunks)."""
    fixed = self.contract["input"]["batch"]
    chunk = fixed or chunk
    fn = jax.jit(lambda x: jax.nn.softmax(self.exported.call(preprocess(x, self.contract)), -1))
    out = []
    for i in range(0, len(images), chunk):
      part = np.asarray(images[i:i + chunk])
      n = len(part)
      if fixed and n < fixed:
        part = np.concatenate([part, np.zeros((fixed - n,) + part.shape[1:], part.dtype)])
      out.append(np.asarray(fn(part))[:n])
    return np.concatenate(out)


def load(path: str | pathlib.Path) -> Artifact:
  """The export in `path` (its directory, contract.json or model.stablehlo); its file's
  sha256 must match the contract's."""
  path = pathlib.Path(path).expanduser().absolute()
  directory = path if path.is_dir() else path.parent
  cfile = directory / CONTRACT
  if not cfile.is_file():
    raise NotFound(f"{cfile} not found: pass the directory that python -m mer_jax.export "
                   "--workdir RUN wrote (RUN/export by default).")
  contract = json.loads(cfile.read_text())
  if contract.get("format") != FORMAT:
    raise UserError(f"{cfile} is not a {FORMAT} contract (format "
                    f"{contract.get('format')!r}); export the run again.")
  entry = contract["files"]["stablehlo"]
  data = (directory / entry["file"]).read_bytes()
  if sha256(data) != entry["sha256"]:
    raise UserError(f"{directory / entry['file']} is not the file its contract describes "
                    "(sha256 differs): export the run again.")
  return Artifact(directory, contract, jax.export.deserialize(bytearray(data)))
