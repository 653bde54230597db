"""Weight files, the Hugging Face hub and the converted-weights cache.

A weight source is a local file (model.safetensors, a timm or Google .npz,
a PyTorch .pth/.bin read with weights_only=True), a folder holding one, or a
hub id ("timm/poolformer_m36.sail_in1k", optionally "hf-hub:"-prefixed).
`load_pretrained` turns one into Flax variables once (the family's
`convert_timm`, through `mer_jax.models.from_timm`) and caches them, so
training starts without torch and without converting again. No machine is
assumed online: an offline hub id fails at once, saying which file to fetch.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import socket

import flax.serialization
import numpy as np

from mer_jax import models
from mer_jax.plumbing import paths
from mer_jax.plumbing.errors import NotFound
from mer_jax.models import vit
from mer_jax.models.state_dict import ConversionError

_HUB = "https://huggingface.co"


class WeightsNotFound(NotFound):
  """A weight source that is neither a readable file nor a reachable hub id."""


def _hub_id(source: str) -> str | None:
  s = source[len("hf-hub:"):] if source.startswith("hf-hub:") else source
  parts = s.split("/")
  if len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~")) \
      and not any(s.endswith(e) for e in (".safetensors", ".npz", ".pth", ".pt", ".bin")):
    return s
  return None


def _online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
  if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or \
      os.environ.get("MER_JAX_OFFLINE", "0") not in ("", "0"):
    return False
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def _download_hint(hub_id: str) -> str:
  return (f"download {_HUB}/{hub_id}/resolve/main/model.safetensors on a machine with "
          "internet access, copy it here and pass its path instead of the hub id "
          "(--config.init.weights=/path/to/model.safetensors, or "
          "`python -m mer_jax.convert --weights /path/to/model.safetensors ...`).")


def _from_hub(hub_id: str, cache_dir: str | None) -> str:
  if not _online():
    raise WeightsNotFound(
        f"Cannot fetch {hub_id!r}: this machine is offline (no connection to huggingface.co). "
        + _download_hint(hub_id))
  import huggingface_hub

  try:
    return huggingface_hub.hf_hub_download(hub_id, "model.safetensors", cache_dir=cache_dir)
  except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
    raise WeightsNotFound(f"Could not download {hub_id!r} from the hub ({e}). "
                          + _download_hint(hub_id)) from e


def _torch_file(path) -> dict:
  try:
    import torch
  except ImportError as e:
    raise ConversionError(
        f"{path} is a PyTorch pickle, which needs torch to read; convert it to "
        "model.safetensors on a machine with torch, or install torch.") from e
  obj = torch.load(str(path), map_location="cpu", weights_only=True)
  for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
      break
  return {k.removeprefix("module."): v.detach().cpu().float().numpy()
          for k, v in obj.items() if hasattr(v, "detach")}


def resolve_weights(source: str, cache_dir: str | None = None) -> str:
  """The local file a weight source stands for (downloading a hub id when online).

  Raises WeightsNotFound saying where it looked and what to do.
  """
  p = pathlib.Path(os.path.expanduser(str(source)))
  if p.is_dir():
    for name in ("model.safetensors", "pytorch_model.bin", "model.npz"):
      if (p / name).is_file():
        return str(p / name)
    raise WeightsNotFound(f"No model.safetensors, pytorch_model.bin or model.npz in {p.resolve()}")
  if p.is_file():
    return str(p)
  hub = _hub_id(str(source))
  if hub is not None:
    return _from_hub(hub, cache_dir)
  raise WeightsNotFound(
      f"Weights file not found: {source!r} (looked for {p.resolve()}; working directory "
      f"{os.getcwd()}). Pass a model.safetensors / .npz / .pth file, a folder holding one, "
      "or a timm hub id such as timm/poolformer_m36.sail_in1k.")


def load_state_dict(source: str, img_size: int | None = None,
                    cache_dir: str | None = None) -> dict[str, np.ndarray]:
  """{timm key: float32 array} from a weight source (see `resolve_weights`).

  Google ViT `.npz` files are renamed to timm's keys (their position
  embedding resampled to `img_size` by timm's .npz rule). safetensors and npz
  are read with numpy; only `.pth/.pt/.bin` files import torch.
  """
  path = resolve_weights(source, cache_dir)
  suffix = path.rsplit(".", 1)[-1].lower()
  if suffix == "safetensors":
    import safetensors.numpy
    try:
      sd = safetensors.numpy.load_file(path)
    except Exception as e:  # noqa: BLE001
      raise ConversionError(f"{path} is not a readable safetensors file: {e}") from e
  elif suffix == "npz":
    with np.load(path) as z:
      sd = {k: z[k] for k in z.files}
    if vit.is_google_npz(sd):
      sd = vit.npz_to_timm(sd, img_size=img_size)
  elif suffix in ("pth", "pt", "bin", "ckpt"):
    sd = _torch_file(path)
  else:
    raise ConversionError(f"Unknown weight file type {path!r}: expected .safetensors, "
                          ".npz, or a PyTorch .pth/.pt/.bin")
  return {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
          else np.asarray(v) for k, v in sd.items()}


def default_cache_dir() -> str:
  """The converted-weights folder under mer_jax's cache root (mer_jax.plumbing.paths)."""
  return str(paths.cache_dir("converted"))


def _source_fingerprint(source: str) -> str:
  """Identifies a weight source's content cheaply: path, size and mtime of a
  local file; the id itself for a hub id."""
  p = os.path.expanduser(str(source))
  if os.path.exists(p):
    st = os.stat(p)
    key = f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}"
  else:
    key = str(source)
  return hashlib.sha1(key.encode()).hexdigest()[:12]


def load_pretrained(name: str, source: str, img_size: int = 224, in_chans: int = 3,
                    num_classes: int = 7, seed: int = 0, cache_dir: str | None = None) -> dict:
  """Flax variables for `create_model(name, ...)` from a weight source,
  converted once and cached (flax msgpack) under `cache_dir`."""
  cache_dir = os.path.expanduser(cache_dir or default_cache_dir())
  tag = f"{name}_{img_size}_c{in_chans}_n{num_classes}_s{seed}_{_source_fingerprint(source)}"
  cached = os.path.join(cache_dir, tag + ".msgpack")
  if os.path.exists(cached):
    with open(cached, "rb") as f:
      logging.info("Converted weights from cache %s", cached)
      return flax.serialization.msgpack_restore(f.read())
  sd = load_state_dict(source, img_size=img_size, cache_dir=os.path.join(cache_dir, "hub"))
  variables = models.from_timm(name, sd, img_size=img_size, in_chans=in_chans,
                               num_classes=num_classes, seed=seed)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = cached + f".tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(variables))
  os.replace(tmp, cached)  # a killed conversion never leaves a truncated cache entry
  logging.info("Converted %s for %s and cached it at %s", source, name, cached)
  return variables
