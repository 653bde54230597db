r"""The GPU check: Flax vs timm speed of the paper's models, then a short real training run.

  python benchmarks/gpu_check.py [--models vit_b32,swin_b,poolformer_m36,poolformer_m48]
      [--methods M1,M2] [--batches paper,64] [--dtypes float32,bfloat16]
      [--time_budget 450] [--out gpu_check.md] [--skip_train] [--train_data_dir DIR]
      [--multirun_ks 1,2,4,8]
  python benchmarks/gpu_check.py --tiny            # CPU, seconds: what the test suite runs

Part 1, model speed, for every model x method (M1 384 RGB, M2 224 gray) x
batch ("paper" = 16 for M1, 8 for M2) x dtype (`create_model(dtype=...)`;
timm under `torch.autocast` to the same dtype, parameters float32 in both):
forward images/s (eval mode) and training step images/s (forward + backward
+ AdamW, cross-entropy, random weights), Flax and timm on the same device,
with XLA's useful TFLOP/s (the compiled program's `cost_analysis()` flops
over the measured time; timm's column divides the same count by timm's
time), the training step's memory (Flax: XLA's buffer plan; timm:
`torch.cuda.max_memory_allocated`) and Flax's compile time.
Flax runs in one worker process, then timm in another, so that neither
framework's memory pool starves the other. The Flax worker first compiles
every case ahead of time in a few threads (`--compile_workers`), then
measures them one by one, so that XLA's GPU autotuning never runs beside a
timing. Float32 matmuls use TF32 in both frameworks (JAX's default on GPUs;
torch is set to match, `--no_torch_tf32` to keep torch's full float32).

Part 2, a real run: `python -m mer_jax.train` on the paper's pool_m36 M2 MFS
config, 2 epochs from random init on a small synthetic CASME II, reading its
images/s and input-wait fraction from epoch 2's history record (epoch 1 holds
the compilation) and the compile time from JAX's compile log.

Part 3, K runs in one program: K = 1..8 seeds of ViT-B/32 M2 (224 gray,
batch 8) with their state stacked and the train step vmapped
(mer_jax.run.multirun) vs one run's plain step, runs per hour
(benchmarks/bench_multirun.py, in a process of its own; needs ml_collections,
as part 2). Its table is printed before part 1's.

Every case has bounded wall time (a warm-up call, then enough timed calls for
`--case_seconds`, at most `--iters`); a case that runs out of device memory
shows "OOM"; cases the `--time_budget` cannot fit show "skipped". The last
thing printed is one Markdown table (the same is written to --out, with the
raw numbers in a .json beside it).

On the project's GPU machine (Python 3.12, jax, flax, optax, orbax, timm,
torch; no ml_collections, tensorflow-datasets, array_record; no network),
part 1 needs nothing more. Part 2 needs the wheels and a prebuilt dataset
that `python benchmarks/gpu_bundle.py DIR` puts in DIR here (21 MiB); see BENCHMARKS.md,
"GPU check", for the device command.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gc
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the GPU machine runs from a plain checkout, not installed
  sys.path.insert(0, str(ROOT))

from mer_jax.plumbing import timing

METHODS = {"M1": (384, 3), "M2": (224, 1)}      # the paper's inputs
TINY_METHODS = {"M1": (64, 3), "M2": (32, 1)}   # --tiny: same channels, small images
# The paper's batch per method (mer_jax/run/recipe.py BATCH_SIZE; not imported,
# it needs ml_collections, which the GPU machine lacks).
PAPER_BATCH = {"M1": 16, "M2": 8}
DEFAULT_MODELS = "vit_b32,swin_b,poolformer_m36,poolformer_m48"
# Our name -> timm's, per method (ViT and Swin have 384 variants).
TIMM_NAMES = {
    ("vit_b32", "M1"): "vit_base_patch32_384", ("vit_b32", "M2"): "vit_base_patch32_224",
    ("swin_b", "M1"): "swin_base_patch4_window12_384",
    ("swin_b", "M2"): "swin_base_patch4_window7_224",
}
NUM_CLASSES = 7
LR, WEIGHT_DECAY = 5e-5, 1e-3      # the paper's AdamW
# What part 2 needs beyond the GPU machine's own packages (found by running
# mer_jax.train against that package list); benchmarks/gpu_bundle.py fetches them.
TRAIN_MODULES = ("ml_collections", "tensorflow_datasets", "array_record")


# --- the cases ---------------------------------------------------------------


@dataclasses.dataclass
class Case:
  id: int
  model: str
  method: str
  size: int
  chans: int
  batch: int
  dtype: str

  @property
  def timm_name(self) -> str:
    return TIMM_NAMES.get((self.model, self.method), self.model)

  @property
  def label(self) -> str:
    return f"{self.model} {self.method} b{self.batch} {self.dtype}"


def make_cases(args) -> list[Case]:
  """Ordered so that a short budget still covers every model: float32 at the
  paper's batch first, then batch 64, then the same in bfloat16."""
  sizes = TINY_METHODS if args.tiny else METHODS
  cases = []
  for dtype in args.dtypes.split(","):
    for b in args.batches.split(","):
      for method in args.methods.split(","):
        for model in args.models.split(","):
          batch = PAPER_BATCH[method] if b == "paper" else int(b)
          size, chans = sizes[method]
          cases.append(Case(len(cases), model, method, size, chans, batch, dtype))
  return cases


def _is_oom(e: BaseException) -> bool:
  s = f"{type(e).__name__}: {e}"
  return "RESOURCE_EXHAUSTED" in s or "out of memory" in s.lower() or "OutOfMemory" in s


def _short(e: BaseException) -> str:
  line = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {line}"[:120]


def _emit(tag: str, obj) -> None:
  print(f"{tag} {json.dumps(obj)}", flush=True)


def _timing_args(args) -> dict:
  """Each measurement's bounds (`timing.pipelined_seconds`) from the command line."""
  return {"warmup": args.warmup, "iters": args.iters, "case_seconds": args.case_seconds}


# --- Flax worker -------------------------------------------------------------


def _step_bytes(compiled) -> float | None:
  """XLA's memory plan of the step: arguments + outputs + temporaries - donated aliases."""
  try:
    m = compiled.memory_analysis()
    return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001
    return None


def flax_worker(cases: list[Case], deadline: float, args) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from mer_jax.models import create_model

  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
  dev = jax.devices()[0]
  _emit("INFO", {"flax_device": f"{dev.platform}: {dev.device_kind}", "jax": jax.__version__,
                 "device_count": jax.device_count()})
  tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

  def compile_case(c: Case, compile_deadline: float):
    if time.time() > compile_deadline:
      return {"status": "skipped"}
    try:
      t0 = time.perf_counter()
      model = create_model(c.model, num_classes=NUM_CLASSES, img_size=c.size,
                           in_chans=c.chans, dtype=jnp.dtype(c.dtype))
      x = jax.ShapeDtypeStruct((c.batch, c.size, c.size, c.chans), jnp.float32)
      y = jax.ShapeDtypeStruct((c.batch,), jnp.int32)
      key = jax.ShapeDtypeStruct((2,), jnp.uint32)
      variables = jax.eval_shape(
          lambda: model.init(jax.random.PRNGKey(0),
                             jnp.zeros((1, c.size, c.size, c.chans), jnp.float32)))
      params = variables["params"]
      rest = {k: v for k, v in variables.items() if k != "params"}
      opt_state = jax.eval_shape(tx.init, params)

      def forward(v, x):
        return model.apply(v, x, train=False)

      def step(params, opt_state, rest, x, y, key):
        def loss_of(p):
          logits = model.apply({"params": p, **rest}, x, train=True, rngs={"dropout": key})
          return optax.softmax_cross_entropy_with_integer_labels(
              logits.astype(jnp.float32), y).mean()
        loss, grads = jax.value_and_grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

      fwd = jax.jit(forward).lower(variables, x).compile()
      # Donated state, as in mer_jax.train: parameters and moments updated in place.
      stp = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, rest, x, y,
                                                       key).compile()
      return {"status": "ok", "fwd": fwd, "step": stp, "variables": variables,
              "opt_state": opt_state, "compile_s": time.perf_counter() - t0,
              "fwd_flops": timing.xla_flops(fwd), "step_flops": timing.xla_flops(stp),
              "step_bytes": _step_bytes(stp)}
    except Exception as e:  # noqa: BLE001 - one bad case must not end the check
      return {"status": "OOM" if _is_oom(e) else "error", "error": _short(e)}

  def host_arrays(tree, seed):
    """Random-ish values of the tree's shapes, made on the host (no per-shape
    device compilations): a tiled normal sample for floats, zeros otherwise."""
    base = np.random.default_rng(seed).standard_normal(1 << 20).astype(np.float32) * 0.02

    def make(s):
      if jnp.issubdtype(s.dtype, jnp.floating):
        return np.resize(base, s.shape).astype(s.dtype)
      return np.zeros(s.shape, s.dtype)
    return jax.tree.map(make, tree)

  # Phase 1: compile everything (in parallel), within the first part of the budget.
  compile_deadline = time.time() + args.compile_share * max(0.0, deadline - time.time())
  compiled = {}
  with concurrent.futures.ThreadPoolExecutor(max(1, args.compile_workers)) as pool:
    futures = {c.id: pool.submit(compile_case, c, compile_deadline) for c in cases}
    for c in cases:
      compiled[c.id] = futures[c.id].result()
      r = compiled[c.id]
      print(f"[flax] compiled {c.label}: {r['status']}"
            + (f" in {r['compile_s']:.1f} s" if r["status"] == "ok" else ""),
            file=sys.stderr, flush=True)

  # Phase 2: measure, one case at a time.
  for c in cases:
    r = compiled.pop(c.id)
    out = {"id": c.id, "framework": "flax", "status": r["status"]}
    if r["status"] != "ok":
      _emit("RESULT", {**out, "error": r.get("error", "")})
      continue
    if time.time() > deadline:
      _emit("RESULT", {**out, "status": "skipped"})
      continue
    out.update(compile_s=r["compile_s"], fwd_flops=r["fwd_flops"], step_flops=r["step_flops"],
               step_bytes=r["step_bytes"])
    _emit("START", {"id": c.id})
    state = None
    try:
      variables = jax.device_put(host_arrays(r["variables"], c.id))
      rng = np.random.default_rng(c.id)
      x = jax.device_put(rng.uniform(-2, 2, (c.batch, c.size, c.size, c.chans))
                         .astype(np.float32))
      y = jax.device_put((np.arange(c.batch) % NUM_CLASSES).astype(np.int32))
      key = jax.device_put(np.array([0, c.id], np.uint32))
      fwd = r["fwd"]
      t = timing.pipelined_seconds(lambda: fwd(variables, x), jax.block_until_ready,
                                   **_timing_args(args))
      out["fwd_img_s"] = c.batch / t
      params = variables["params"]
      rest = {k: v for k, v in variables.items() if k != "params"}
      del variables
      # AdamW's moments start at zero, as tx.init makes them (random ones give NaNs).
      zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), r["opt_state"])
      state = [params, jax.device_put(zeros)]
      del params
      stp = r["step"]

      def one_step():
        p, o, loss = stp(state[0], state[1], rest, x, y, key)
        state[:] = [p, o]
        return loss
      t = timing.pipelined_seconds(one_step, jax.block_until_ready, **_timing_args(args))
      out["step_img_s"] = c.batch / t
      out["step_s"] = t
    except Exception as e:  # noqa: BLE001
      out["status"] = "OOM" if _is_oom(e) else "error"
      out["error"] = _short(e)
    del state, r
    gc.collect()
    _emit("RESULT", out)


# --- timm worker ---------------------------------------------------------------


def timm_worker(cases: list[Case], deadline: float, args) -> None:
  import numpy as np
  import timm
  import torch

  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  if cuda:
    torch.backends.cudnn.benchmark = True     # conv autotuning, as XLA's
    if args.torch_tf32:
      torch.backends.cuda.matmul.allow_tf32 = True
      torch.backends.cudnn.allow_tf32 = True
  elif args.tiny:
    # 2 OpenMP threads on a busy 2-core machine spin: 20x slower steps.
    torch.set_num_threads(1)
  _emit("INFO", {"timm_device": torch.cuda.get_device_name(0) if cuda else "cpu",
                 "torch": torch.__version__, "timm": timm.__version__,
                 "torch_tf32": bool(cuda and args.torch_tf32)})
  sync = torch.cuda.synchronize if cuda else (lambda: None)

  for c in cases:
    out = {"id": c.id, "framework": "timm", "status": "ok"}
    if time.time() > deadline:
      _emit("RESULT", {**out, "status": "skipped"})
      continue
    _emit("START", {"id": c.id})
    model = opt = None
    try:
      kw = {"img_size": c.size} if c.model.startswith(("vit", "swin")) else {}
      torch.manual_seed(c.id)
      with torch.device(device):   # initialised on the device: seconds less per case
        model = timm.create_model(c.timm_name, num_classes=NUM_CLASSES, in_chans=c.chans,
                                  **kw)
      rng = np.random.default_rng(c.id)
      x = torch.from_numpy(rng.uniform(-2, 2, (c.batch, c.chans, c.size, c.size))
                           .astype(np.float32)).to(device)
      y = torch.from_numpy((np.arange(c.batch) % NUM_CLASSES).astype(np.int64)).to(device)
      autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16,  # noqa: E731
                                        enabled=c.dtype == "bfloat16")
      model.eval()

      def forward():
        with torch.no_grad(), autocast():
          return model(x)
      t = timing.pipelined_seconds(forward, lambda _: sync(), **_timing_args(args))
      out["fwd_img_s"] = c.batch / t
      model.train()
      opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

      def one_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
          loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss
      if cuda:
        torch.cuda.reset_peak_memory_stats()
      t = timing.pipelined_seconds(one_step, lambda _: sync(), **_timing_args(args))
      out["step_img_s"] = c.batch / t
      out["step_s"] = t
      if cuda:
        out["step_bytes"] = float(torch.cuda.max_memory_allocated())
    except Exception as e:  # noqa: BLE001 - torch.cuda.OutOfMemoryError included
      out["status"] = "OOM" if _is_oom(e) else "error"
      out["error"] = _short(e)
    del model, opt
    gc.collect()
    if cuda:
      torch.cuda.empty_cache()
    _emit("RESULT", out)


# --- the parent: workers, training run, table ------------------------------------


def run_worker(kind: str, cases: list[Case], deadline: float, args, log) -> tuple[dict, dict]:
  """Runs a worker process until its cases are done or the deadline passes;
  a worker that dies is restarted on the cases it had not reached, and the
  case it died on is reported as its failure. Returns ({id: result}, info)."""
  from mer_jax.plumbing import runtime
  results, info = {}, {}
  todo = list(cases)
  env = runtime.with_malloc_tunables(os.environ)  # the settings of BENCHMARKS' tables
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  if kind == "flax":
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")  # default 0.75 would OOM early
    if args.tiny and "xla_backend_optimization_level" not in env.get("XLA_FLAGS", ""):
      # The CPU test checks that the code runs, not its speed: compile fast.
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                          " --xla_llvm_disable_expensive_passes=true").strip()
  while todo and time.time() < deadline:
    with tempfile.TemporaryDirectory() as tmp:
      spec = pathlib.Path(tmp) / "cases.json"
      spec.write_text(json.dumps([dataclasses.asdict(c) for c in todo]))
      errf = open(pathlib.Path(tmp) / "stderr", "w+")
      cmd = [sys.executable, __file__, "--worker", kind, "--cases_file", str(spec),
             "--deadline", str(deadline)] + _passthrough(args)
      proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True, env=env)
      started = None
      killer = _Killer(proc, deadline + 30)    # a hung worker still ends
      for line in proc.stdout:
        tag, _, payload = line.partition(" ")
        if tag == "INFO":
          info.update(json.loads(payload))
        elif tag == "START":
          started = json.loads(payload)["id"]
        elif tag == "RESULT":
          r = json.loads(payload)
          results[r["id"]] = r
          started = None
          c = next(c for c in todo if c.id == r["id"])
          log(f"[{kind}] {c.label}: {_summary(r)}")
      proc.wait()
      killer.cancel()
      errf.seek(0)
      err_tail = errf.read()[-3000:]
      errf.close()
    todo = [c for c in todo if c.id not in results]
    if not todo:
      break
    why = "timeout" if killer.fired else f"crash (exit {proc.returncode})"
    log(f"[{kind}] worker ended early: {why}; stderr tail:\n{err_tail}")
    # The case it was on is charged with the failure; the rest are retried.
    victim = started if started is not None else todo[0].id
    results[victim] = {"id": victim, "framework": kind,
                       "status": "OOM" if _is_oom(Exception(err_tail)) else why,
                       "error": (err_tail.strip().splitlines() or [""])[-1][:120]}
    todo = [c for c in todo if c.id != victim]
  for c in todo:
    results.setdefault(c.id, {"id": c.id, "framework": kind, "status": "skipped"})
  return results, info


class _Killer:
  """Kills a process at a wall-clock time unless cancelled."""

  def __init__(self, proc, when: float):
    import threading
    self.fired = False
    self._timer = threading.Timer(max(0.0, when - time.time()), self._kill, args=(proc,))
    self._timer.daemon = True
    self._timer.start()

  def _kill(self, proc):
    if proc.poll() is None:
      self.fired = True
      proc.kill()

  def cancel(self):
    self._timer.cancel()


def _passthrough(args) -> list[str]:
  out = ["--iters", str(args.iters), "--warmup", str(args.warmup),
         "--case_seconds", str(args.case_seconds), "--compile_workers",
         str(args.compile_workers), "--compile_share", str(args.compile_share)]
  if not args.torch_tf32:
    out.append("--no_torch_tf32")
  if args.tiny:
    out.append("--tiny")
  if args.compilation_cache:
    out += ["--compilation_cache", args.compilation_cache]
  return out


def _summary(r: dict) -> str:
  if r["status"] != "ok":
    return r["status"] + (f" ({r['error']})" if r.get("error") else "")
  return (f"fwd {r['fwd_img_s']:.1f} img/s, step {r['step_img_s']:.1f} img/s"
          + (f", compiled in {r['compile_s']:.1f} s" if r.get("compile_s") else ""))


_COMPILE_LOG = re.compile(r"Finished (?:tracing|jaxpr to MLIR module conversion|XLA "
                          r"compilation)(?: of)? (\S+?)(?: for jit)? in ([\d.]+) sec")


def run_train(args, deadline: float, log) -> dict:
  """`python -m mer_jax.train` for 2 epochs on a small synthetic set -> its numbers."""
  tiny = args.tiny
  row = {"model": "poolformer_s12" if tiny else "poolformer_m36", "input": "M2 MFS",
         "dtype": args.train_dtype, "epochs": 2}
  if deadline - time.time() < 10:
    return {**row, "status": "skipped", "error": "no time left in --time_budget"}
  missing = [m for m in TRAIN_MODULES if importlib.util.find_spec(m) is None]
  if missing:
    return {**row, "status": "skipped", "error": f"missing {', '.join(missing)}: bring the "
            "wheels (benchmarks/gpu_bundle.py)"}
  if args.train_workdir:
    return _run_train(args, deadline, log, row, pathlib.Path(args.train_workdir))
  with tempfile.TemporaryDirectory(prefix="gpu_check_train_") as tmp:
    return _run_train(args, deadline, log, row, pathlib.Path(tmp))


def _run_train(args, deadline: float, log, row: dict, work: pathlib.Path) -> dict:
  tiny = args.tiny
  data_dir = pathlib.Path(args.train_data_dir) if args.train_data_dir else work / "tfds"
  manual, synthetic = (work / "casme2").absolute(), "true"
  if args.train_data_dir:
    # A prebuilt M2 MFS (the bundle's): train on it by naming its source, which
    # the build reuses even where that folder is absent (mer_jax.data.build).
    from mer_jax.data import build, fingerprint
    built = build.built_dirs(data_dir, "m2_mfs")
    if built and fingerprint.read(built[-1]):
      manual, synthetic = fingerprint.read(built[-1])["source"], "false"
  shutil.rmtree(work / "run", ignore_errors=True)
  opts = {"num_epochs": 2, "patience": 10, "init.weights": "", "model.dtype": args.train_dtype,
          "data.data_dir": data_dir.absolute(), "data.manual_dir": manual,
          "data.synthetic": synthetic, "data.synthetic_videos": args.train_videos,
          "data.synthetic_subjects": args.train_subjects, "bootstrap_resamples": 100,
          "checkpoint_keep": 1}
  if tiny:
    opts.update({"model.name": "poolformer_s12", "model.img_size": 32, "batch_size": 8,
                 "eval_batch_size": 16, "log_every_steps": 5})
  if args.train_batch:
    opts["batch_size"] = args.train_batch
  cmd = [sys.executable, "-m", "mer_jax.train", "--config",
         f"{ROOT / 'configs' / 'paper.py'}:model=pool_m36,method=m2,phase=mfs", "--workdir", str(work / "run")]
  cmd += [f"--config.{k}={v}" for k, v in opts.items()]
  from mer_jax.plumbing import runtime
  env = runtime.with_malloc_tunables(os.environ)  # the settings of BENCHMARKS' tables
  env["JAX_LOG_COMPILES"] = "1"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  log("[train] " + " ".join(cmd[1:]))
  t0 = time.perf_counter()
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=max(1.0, deadline - time.time()))
  except subprocess.TimeoutExpired:
    return {**row, "status": "timeout", "wall_s": time.perf_counter() - t0}
  row["wall_s"] = time.perf_counter() - t0
  if out.returncode != 0:
    tail = [l for l in out.stderr.strip().splitlines() if l.strip()] or ["?"]
    log("[train] failed:\n" + "\n".join(tail[-15:]))
    return {**row, "status": "OOM" if _is_oom(Exception(out.stderr[-4000:])) else "error",
            "error": tail[-1][:120]}
  history = _history(work / "run")
  if len(history) < 2:
    return {**row, "status": "error", "error": "no epoch-2 record in metrics.json"}
  e1, e2 = history[0], history[1]
  times = [(name, float(s)) for name, s in _COMPILE_LOG.findall(out.stderr)]
  compile_s = sum(s for _, s in times) if times else None
  row.update(status="ok", batch=_config_batch(work / "run"), data=_data_size(data_dir),
             img_s=e2.get("images_per_s"), input_wait=e2.get("input_wait_fraction"), epoch1_s=e1.get("seconds"),
             epoch2_s=e2.get("seconds"), compile_s=compile_s,
             compile_max=max(times, key=lambda t: t[1]) if times else None,
             # Without a compile log (another JAX's wording): epoch 1 minus epoch 2.
             compile_estimate_s=(e1["seconds"] - e2["seconds"]) if "seconds" in e1 else None)
  log(f"[train] {json.dumps(row)}")
  return row


def _history(workdir: pathlib.Path) -> list[dict]:
  m = workdir / "metrics.json"
  if m.exists():
    h = json.loads(m.read_text()).get("history")
    if h:
      return h
  j = workdir / "metrics.jsonl"
  if not j.exists():
    return []
  recs = [json.loads(l) for l in j.read_text().splitlines() if l.strip()]
  return [r for r in recs if "images_per_s" in r and "input_wait_fraction" in r]


def _data_size(data_dir: pathlib.Path) -> str:
  """'N videos, M images' of the built M2 MFS config (its quality.json)."""
  from mer_jax.data import build
  for built in build.built_dirs(data_dir, "m2_mfs")[::-1]:
    try:
      d = json.loads((built / "quality.json").read_text())
      return f"{d['videos']} synthetic videos, {d['frames']} images"
    except (OSError, KeyError, ValueError):
      pass
  return "?"


def _config_batch(workdir: pathlib.Path):
  try:
    return json.loads((workdir / "config.json").read_text())["batch_size"]
  except (OSError, KeyError, ValueError):
    return None


# --- the table -------------------------------------------------------------------

COLUMNS = ("part", "model", "input", "batch", "dtype", "fwd img/s Flax", "fwd img/s timm",
           "fwd Flax/timm", "step img/s Flax", "step img/s timm", "step Flax/timm",
           "fwd TFLOP/s Flax", "step TFLOP/s Flax", "step TFLOP/s timm", "step GiB Flax",
           "step GiB timm", "compile s", "input wait")


def _num(v) -> str:
  if v is None:
    return "—"
  v = float(v)
  if abs(v) >= 100:
    return f"{v:.0f}"
  if abs(v) >= 10:
    return f"{v:.1f}"
  return f"{v:.3g}"


def _cell(r: dict | None, key: str, scale: float = 1.0) -> str:
  if r is None:
    return "—"
  if r.get("status") != "ok":
    return r.get("status", "?")
  v = r.get(key)
  return _num(v * scale) if v is not None else "—"


def _ratio(a: dict | None, b: dict | None, key: str) -> str:
  if a and b and a.get("status") == b.get("status") == "ok" and a.get(key) and b.get(key):
    return f"{a[key] / b[key]:.2f}"
  return "—"


def _tflops(flops, r: dict | None, key: str) -> str:
  """Useful TFLOP/s: XLA's flop count of the step over a framework's step time."""
  if r is None or r.get("status") != "ok":
    return _cell(r, key)
  if not flops or not r.get(key):
    return "—"
  return _num(flops * r[key] / 1e12)


def table(cases: list[Case], flax: dict, timm: dict, train: dict | None) -> str:
  """The markdown table: a row per case, then the training run's."""
  rows = []
  for c in cases:
    f, t = flax.get(c.id), timm.get(c.id)
    flops_f = f.get("fwd_flops") if f else None
    flops_s = f.get("step_flops") if f else None
    rows.append([
        "speed", c.model, f"{c.method} {c.size} {'RGB' if c.chans == 3 else 'gray'}",
        str(c.batch), c.dtype, _cell(f, "fwd_img_s"), _cell(t, "fwd_img_s"),
        _ratio(f, t, "fwd_img_s"), _cell(f, "step_img_s"), _cell(t, "step_img_s"),
        _ratio(f, t, "step_img_s"),
        _tflops(flops_f and flops_f / c.batch, f, "fwd_img_s"),
        _tflops(flops_s and flops_s / c.batch, f, "step_img_s"),
        _tflops(flops_s and flops_s / c.batch, t, "step_img_s"),
        _cell(f, "step_bytes", 2 ** -30), _cell(t, "step_bytes", 2 ** -30),
        _cell(f, "compile_s"), "—"])
  if train is not None:
    ok = train.get("status") == "ok"
    status = train.get("status", "?")
    compile_s = train.get("compile_s")
    rows.append([
        "mer_jax.train, 2 epochs", train["model"], train["input"], str(train.get("batch") or "—"),
        train["dtype"], "—", "—", "—",
        _num(train.get("img_s")) if ok else status, "—", "—", "—", "—", "—", "—", "—",
        (_num(compile_s) if compile_s is not None
         else "~" + _num(train.get("compile_estimate_s"))) if ok else status,
        f"{100 * train['input_wait']:.1f} %" if ok and train.get("input_wait") is not None
        else ("—" if ok else status)])
  return timing.markdown_table(COLUMNS, rows, right_from=5)


def run_multirun(args, deadline: float, log) -> dict:
  """Part 3: benchmarks/bench_multirun.py's K = --multirun_ks runs in one program vs one
  by one, in a process of its own -> {"status", "rows"} (bench_multirun.measure's rows)."""
  row = {"model": args.multirun_model, "ks": args.multirun_ks}
  if not args.multirun_ks:
    return {**row, "status": "skipped", "error": "--multirun_ks is empty"}
  if importlib.util.find_spec("ml_collections") is None:
    return {**row, "status": "skipped", "error": "missing ml_collections: bring the wheels "
            "(benchmarks/gpu_bundle.py)"}
  from mer_jax.plumbing import runtime
  env = runtime.with_malloc_tunables(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
  with tempfile.TemporaryDirectory(prefix="gpu_check_multirun_") as tmp:
    out = pathlib.Path(tmp) / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_multirun.py"), "--model",
           args.multirun_model, "--method", "m2", "--batch", str(args.multirun_batch),
           "--img_size", str(args.multirun_img_size), "--ks", args.multirun_ks,
           "--iters", str(args.iters), "--case_seconds", str(args.case_seconds),
           "--json", str(out)]
    log("[multirun] " + " ".join(cmd[1:]))
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      return {**row, "status": "timeout"}
    if proc.returncode != 0:
      tail = [l for l in proc.stderr.strip().splitlines() if l.strip()] or ["?"]
      log("[multirun] failed:\n" + "\n".join(tail[-15:]))
      return {**row, "status": "OOM" if _is_oom(Exception(proc.stderr[-4000:])) else "error",
              "error": tail[-1][:120]}
    return {**row, "status": "ok", "rows": json.loads(out.read_text())}


# --- main ------------------------------------------------------------------------


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--models", default=None, help=f"comma list (default {DEFAULT_MODELS}; "
                  "--tiny: poolformer_s12)")
  ap.add_argument("--methods", default="M1,M2", help="M1 (384 RGB), M2 (224 gray)")
  ap.add_argument("--batches", default=None,
                  help="comma list; 'paper' = 16 (M1) / 8 (M2) (default paper,64; --tiny: 2)")
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--time_budget", type=float, default=450.0,
                  help="seconds for the whole check; cases that do not fit are skipped")
  ap.add_argument("--out", default=str(ROOT / "runs" / "gpu_check.md"),
                  help="where the table goes (raw numbers: the same name, .json)")
  ap.add_argument("--skip_train", action="store_true", help="only the model-speed part")
  ap.add_argument("--tiny", action="store_true",
                  help="CPU test size: poolformer_s12, 64/32 px, batch 2, one iteration")
  ap.add_argument("--iters", type=int, default=None, help="most timed calls per measurement "
                  "(default 20; --tiny 1)")
  ap.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  ap.add_argument("--case_seconds", type=float, default=None,
                  help="aim of each measurement's timed calls (default 0.3; --tiny 0)")
  ap.add_argument("--compile_workers", type=int, default=None,
                  help="Flax cases compiled at once (default min(6, cores // 2), at least 1)")
  ap.add_argument("--compile_share", type=float, default=0.5,
                  help="share of the Flax worker's time that compiling may take")
  ap.add_argument("--no_torch_tf32", dest="torch_tf32", action="store_false",
                  help="torch float32 matmuls in full float32 (JAX's GPU default is TF32)")
  ap.add_argument("--compilation_cache", default="", help="JAX persistent compilation cache dir")
  ap.add_argument("--train_data_dir", default="",
                  help="TFDS data dir holding casme2/m2_mfs (e.g. the bundle's tfds/); "
                  "default: built in a temporary dir (needs TensorFlow)")
  ap.add_argument("--train_workdir", default="", help="default: a temporary dir")
  ap.add_argument("--train_videos", type=int, default=None,
                  help="synthetic videos (default 40; --tiny 16)")
  ap.add_argument("--train_subjects", type=int, default=None, help="default 8; --tiny 4")
  ap.add_argument("--train_batch", type=int, default=0, help="0 = the config's (8)")
  ap.add_argument("--train_dtype", default="float32")
  ap.add_argument("--train_timeout", type=float, default=180.0)
  ap.add_argument("--multirun_ks", default=None,
                  help="part 3: comma list of K (default 1,2,4,8; --tiny: none, skipped)")
  ap.add_argument("--multirun_model", default="vit_b32")
  ap.add_argument("--multirun_batch", type=int, default=8)
  ap.add_argument("--multirun_img_size", type=int, default=0, help="0 = M2's 224")
  ap.add_argument("--multirun_timeout", type=float, default=240.0)
  ap.add_argument("--worker", choices=("flax", "timm"), help=argparse.SUPPRESS)
  ap.add_argument("--cases_file", help=argparse.SUPPRESS)
  ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.models is None:
    args.models = "poolformer_s12" if args.tiny else DEFAULT_MODELS
  if args.batches is None:
    args.batches = "2" if args.tiny else "paper,64"
  if args.iters is None:
    args.iters = 1 if args.tiny else 20
  if args.case_seconds is None:
    args.case_seconds = 0.0 if args.tiny else 0.3
  if args.multirun_ks is None:
    args.multirun_ks = "" if args.tiny else "1,2,4,8"
  if args.train_videos is None:
    args.train_videos = 16 if args.tiny else 40
  if args.train_subjects is None:
    args.train_subjects = 4 if args.tiny else 8
  if args.compile_workers is None:
    args.compile_workers = max(1, min(6, (os.cpu_count() or 2) // 2))
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    cases = [Case(**d) for d in json.loads(pathlib.Path(args.cases_file).read_text())]
    (flax_worker if args.worker == "flax" else timm_worker)(cases, args.deadline, args)
    return 0

  t0 = time.time()
  deadline = t0 + args.time_budget - 5.0    # room to print

  def log(msg):
    print(f"[{time.time() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

  for m in args.methods.split(","):
    if m not in METHODS:
      raise SystemExit(f"Unknown method {m!r}; valid: {', '.join(METHODS)}")
  cases = make_cases(args)
  train = None
  if not args.skip_train:
    train = run_train(args, min(deadline, time.time() + args.train_timeout), log)
    if train.get("status") != "ok":
      log(f"[train] {train.get('status')}: {train.get('error', '')}")
  multi = run_multirun(args, min(deadline, time.time() + args.multirun_timeout), log)
  if multi["status"] != "ok":
    log(f"[multirun] {multi['status']}: {multi.get('error', '')}")
  # The rest of the budget: Flax (compiling is most of it) then timm.
  flax_deadline = time.time() + 0.6 * max(0.0, deadline - time.time())
  flax, info_f = run_worker("flax", cases, flax_deadline, args, log)
  timm, info_t = run_worker("timm", cases, deadline, args, log)
  info = {**info_f, **info_t}
  header = (f"GPU check, {time.strftime('%Y-%m-%d %H:%M')}: Flax on {info.get('flax_device', '?')}"
            f" (jax {info.get('jax', '?')}), timm {info.get('timm', '?')} on "
            f"{info.get('timm_device', '?')} (torch {info.get('torch', '?')}, TF32 "
            f"{'on' if info.get('torch_tf32') else 'off'}); random weights, AdamW, "
            f"{time.time() - t0:.0f} s in all. step = forward + backward + AdamW; "
            f"TFLOP/s = XLA's flop count / time; Flax compile times overlap "
            f"({args.compile_workers} threads)"
            + (f"; train: epoch 2 of {train['model']} M2 MFS, random init, "
               f"{train.get('data', '?')}." if train else "."))
  md = table(cases, flax, timm, train)
  if multi["status"] == "ok":   # before part 1's table, which stays the last thing printed
    from benchmarks import bench_multirun
    md = (f"K seeds of {multi['model']} M2 in one program vs one by one (training steps "
          "only; runs of 100 steps):\n\n" + bench_multirun.table(multi["rows"]) + "\n\n" + md)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(header + "\n\n" + md + "\n")
  out.with_suffix(".json").write_text(json.dumps(
      {"info": info, "cases": [dataclasses.asdict(c) for c in cases],
       "flax": {str(k): v for k, v in flax.items()}, "timm": {str(k): v for k, v in timm.items()},
       "train": train, "multirun": multi, "seconds": time.time() - t0}, indent=1,
      default=str))
  print("\n" + header + "\n\n" + md, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
