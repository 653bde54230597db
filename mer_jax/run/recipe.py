"""The paper's training recipe: `get_config(model, method, phase)` gives any cell.

Users reach it through configs/paper.py (`--config
configs/paper.py:model=swin_b,method=m2,phase=af`, parsed by `from_arg`),
the study through `get_config` itself; it lives in the package so configs load
from any directory. Every field can be overridden on the command line, e.g.
`--config.optim.lr=1e-4 --config.data.manual_dir=/data/CASME2`.
"""
import ml_collections

from mer_jax.data.phases import Phase
from mer_jax.data.preprocess import Method
from mer_jax.plumbing.errors import UsageError
from mer_jax import models
from mer_jax.models import temporal

# Paper-name shorthand used in config file names -> create_model() name.
MODELS = {
    "vit_b32": "vit_b32",
    "swin_b": "swin_b",
    "pool_m36": "poolformer_m36",
    "pool_m48": "poolformer_m48",
}
# The paper: focal loss for ViT and PoolFormer-m36, class-weighted CE for Swin and m48.
LOSS = {"vit_b32": "focal", "swin_b": "weighted_ce",
        "poolformer_m36": "focal", "poolformer_m48": "weighted_ce"}
# Local file or timm hub id of each model's ImageNet weights, per input size.
WEIGHTS = {
    ("vit_b32", 224): "timm/vit_base_patch32_224.augreg_in21k_ft_in1k",
    ("vit_b32", 384): "timm/vit_base_patch32_384.augreg_in21k_ft_in1k",
    ("swin_b", 224): "timm/swin_base_patch4_window7_224.ms_in22k_ft_in1k",
    ("swin_b", 384): "timm/swin_base_patch4_window12_384.ms_in22k_ft_in1k",
    ("poolformer_m36", 224): "timm/poolformer_m36.sail_in1k",
    ("poolformer_m36", 384): "timm/poolformer_m36.sail_in1k",
    ("poolformer_m48", 224): "timm/poolformer_m48.sail_in1k",
    ("poolformer_m48", 384): "timm/poolformer_m48.sail_in1k",
}
# Image size of each preprocessing method (M1 384 RGB, M2/M2A 224 gray, M3 224 flow; a
# corner's size).
IMG_SIZE = {m.value: m.size for m in Method}
# Paper: batch 16-32 for M1 and 4-16 for M2; M2A, M3 and the other corners (beyond the
# paper) as M2. mer_jax.study --factorial gives its eight cells one batch size.
BATCH_SIZE = {m.value: 16 if m is Method.M1 else 8 for m in Method}


# The keys of a config argument (configs/paper.py:model=...,method=...,phase=...).
ARG_KEYS = ("model", "method", "phase")


def model_name(model: str) -> str:
  """The registry name of a paper short name (MODELS) or a registry name."""
  name = MODELS.get(model, model)
  try:
    models.family(name)
  except UsageError:
    valid = list(MODELS) + [n for n in models.MODEL_NAMES if n not in MODELS]
    raise UsageError(f"Unknown model {model!r}; valid: {', '.join(valid)}") from None
  return name


def parse_arg(arg: str) -> dict[str, str]:
  """{key: value} of a big_vision-style argument "model=swin_b,method=m2,phase=af";
  keys are ARG_KEYS, each optional (get_config's defaults). The values are
  checked by get_config."""
  out = {}
  for item in filter(None, (x.strip() for x in arg.split(","))):
    key, eq, value = (x.strip() for x in item.partition("="))
    if key not in ARG_KEYS or not eq:
      raise UsageError(f"Config argument {item!r}: expected KEY=VALUE with KEY one of "
                       f"{', '.join(ARG_KEYS)} (e.g. model=swin_b,method=m2,phase=af).")
    if key in out:
      raise UsageError(f"Config argument {arg!r} gives {key} twice; give it once.")
    out[key] = value
  return out


def to_arg(model: str, method: str, phase: str) -> str:
  """The argument that `from_arg` reads back as this cell."""
  return f"model={model},method={method},phase={phase}"


def from_arg(arg: str) -> ml_collections.ConfigDict:
  """get_config of a parsed argument: configs/paper.py's `get_config(arg)`."""
  return get_config(**parse_arg(arg))


def get_config(model: str = "poolformer_m36", method: str = "m1",
               phase: str = "mfs") -> ml_collections.ConfigDict:
  """The paper's recipe for one cell; an unknown model, method or phase is a
  UsageError naming the valid ones. `model` is a model spec
  (mer_jax.models.temporal.parse_spec): a registry or paper name, or with a
  temporal head `poolformer_s12+gru`, `poolformer_s12+mean+frozen`."""
  model, temporal_head, frozen = temporal.parse_spec(model)
  model = model_name(model)
  method, phase = Method.parse(method).value, Phase.parse(phase).value
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = model
  c.model.img_size = IMG_SIZE[method]  # the network's input; images are resized on device if different
  c.model.drop_rate = 0.0
  c.model.drop_path_rate = 0.1
  c.model.dtype = "float32"             # compute dtype; "bfloat16" on GPUs
  c.model.remat = ""                    # "block"/"dots": recompute activations (GPU memory)
  c.model.temporal = temporal_head      # "none": frames vote; "gru"/"mean": one video, one
                                        # prediction (mer_jax.models.temporal; KFS, MFS)
  c.model.freeze_backbone = frozen      # temporal head on frozen backbone features
  c.model.temporal_hidden = 256         # the GRU's state size

  c.init = ml_collections.ConfigDict()
  c.init.weights = WEIGHTS.get((model, IMG_SIZE[method]), "")  # "" = random init
  c.init.cache_dir = ""                 # converted params; default ~/.cache/mer_jax/converted

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "casme2"              # casme2 | samm | smic_hs | casme3 | megc2019 (the
                                        # composite; mer_jax.run.sources)
  c.data.labels = ""                    # a label scheme (mer_jax.data.labels.SCHEMES); "" =
                                        # the dataset's native one (megc2019, cross: megc3)
  c.data.train_datasets = ""            # protocol=cross: comma list (megc2019 = its three)
  c.data.test_dataset = ""              # protocol=cross: the dataset tested on
  c.data.method = method
  c.data.phase = phase
  c.data.manual_dir = "~/casme2"        # the dataset as distributed (see README); several
                                        # datasets: a folder of casme2/, samm/, smic_hs/...
                                        # or casme2=DIR1,samm=DIR2,smic_hs=DIR3
  c.data.data_dir = ""                  # TFDS data dir; default ~/tensorflow_datasets
  c.data.synthetic = False              # write synthetic stand-ins where a source is missing
  c.data.synthetic_videos = 255
  c.data.synthetic_subjects = 26
  c.data.synthetic_intensity = 1.0      # motion amplitude of the synthetic clips (1 = ~9 px)
  c.data.protocol = "paper"             # "paper" (201/26/28 holdout), "loso" or "cross"
  c.data.fold = -1                      # LOSO: index of the held-out subject
  c.data.split = "video"                # paper: "video" (the paper's, subject-dependent) or
                                        # "subject" (test/validation subjects never in train)
  c.data.split_seed = 0                 # paper: 0 = the paper's split (as built); K: another
  c.data.train_fraction = 1.0           # a stratified subsample of the training videos,
                                        # drawn by `seed` (splits.train_subsample)
  c.data.class_balanced = False         # sample training frames class-balanced
  c.data.prefetch = 2

  c.aug = ml_collections.ConfigDict()
  c.aug.enabled = True
  c.aug.scale_min = 0.85                # random resized crop: area fraction
  c.aug.rotate_deg = 10.0
  c.aug.flip = True
  c.aug.brightness = 0.2
  c.aug.contrast = 0.2
  if Method.parse(method).is_flow:
    # An M3 image is a flow field at a fixed scale: brightness and contrast would
    # change the motion it encodes, and a rotation would turn the pixels without
    # the vectors (steps.check_method_fields refuses them). The flip negates u and the
    # random resized crop scales u and v by its zoom (input_pipeline.augment).
    c.aug.rotate_deg = 0.0
    c.aug.brightness = 0.0
    c.aug.contrast = 0.0

  c.loss = ml_collections.ConfigDict()
  c.loss.name = LOSS.get(model, "focal")  # "focal" | "weighted_ce" | "ce"
  c.loss.gamma = 2.0
  c.loss.label_smoothing = 0.0

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 5e-5
  c.optim.weight_decay = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.warmup_epochs = 0
  c.optim.schedule = "constant"         # "constant" | "cosine"
  c.optim.grad_clip = 0.0               # global-norm clip; 0 = off

  c.batch_size = BATCH_SIZE[method]     # global, over all devices and hosts
  c.eval_batch_size = 2 * BATCH_SIZE[method]
  c.num_epochs = 50
  c.patience = 5                        # epochs without a better validation macro-F1
  # "validation" (the run's result: the epoch best on validation). "test_fold_best_epoch"
  # ALSO records each epoch's test predictions, so the study can measure the field's
  # leaky choice of the epoch best on the test videos; the run's result stays the same.
  c.selection = "validation"
  c.min_delta = 0.0

  c.train_loop = "auto"                 # "step" | "scan" | "auto": steps as one compiled
                                        # lax.scan on one device (mer_jax.run.programs)
  c.scan_steps = 16                     # steps of one scanned call (one compile for all folds)

  c.checkpoint_keep = 2                 # latest checkpoints kept (the best is kept apart)
  c.checkpoint_every_steps = 0          # also save mid-epoch; 0 = at epoch ends only
  c.log_every_steps = 10
  c.bootstrap_resamples = 1000
  c.ci_level = 0.95
  return c
