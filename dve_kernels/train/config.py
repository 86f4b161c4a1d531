"""Training configuration: one dataclass whose fields (with their help) are also the command-line flags."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import List, Optional, get_type_hints

__all__ = ["TrainConfig", "PRESETS", "build_parser", "config_from_args", "validate_config", "RESUMABLE_FIELDS"]


def _f(default, help: str, **extra):
    """A config field with its ``--help`` text (and optional argparse ``choices`` / ``short`` flag)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=dict(help=help, **extra))
    return field(default=default, metadata=dict(help=help, **extra))


@dataclass
class TrainConfig:
    # what to learn
    model: str = _f("smallnet", "network: SmallNet (the paper's Table 1) or a single-stack Hourglass",
                    choices=("smallnet", "hourglass"))
    embedding_dim: int = _f(64, "embedding channels C", short="-C")
    model_width: float = _f(1.0, "SmallNet channel multiplier (1 = the paper's layer sizes)")
    model_dilation: int = _f(1, "SmallNet dilation multiplier: 2 doubles the receptive field (54 -> 106 input "
                                "pixels) with the same weights, for inputs at twice the resolution")
    dve: bool = _f(True, "on: the DVE loss (eq. 6); off: the plain warp loss (eq. 3)")
    num_aux: int = _f(1, "auxiliary images per pair in the DVE exchange")
    pow: float = _f(0.5, "exponent of the pixel distance in the loss")
    backend: str = _f("auto", "loss kernels: auto (triton on CUDA, the C++ kernels on CPU), triton, cpu, or "
                              "reference (the dense formulation)", choices=("auto", "triton", "cpu", "reference"))
    # data
    dataset: str = _f("synthetic", "synthetic (built in), folder (any images, no landmarks), celeba (+MAFL), aflw "
                                   "(MTFL-style) or 300w", choices=("synthetic", "folder", "celeba", "aflw", "300w"))
    data_root: Optional[str] = _f(None, "the dataset's folder in its published layout; for synthetic, the folder "
                                        "where rendered faces are cached (default <out>/data)")
    imwidth: int = _f(100, "images are resized to this square size, then warped")
    crop: int = _f(15, "pixels cut from every side after warping (network input = imwidth - 2 crop)")
    train_count: int = _f(20000, "synthetic faces: training identities")
    test_count: int = _f(1000, "synthetic faces: test identities")
    face_marks: int = _f(0, "synthetic faces: random coloured marks on every face (an identity-specific texture)")
    face_detail: float = _f(1.0, "synthetic faces: rendered at this fraction of imwidth, then resized up to it "
                                 "(bilinear): the same faces with less detail")
    data_seed: Optional[int] = _f(None, "synthetic faces: seed of the rendered identities (default: --seed)")
    color_jitter: float = _f(0.4, "brightness/contrast/saturation jitter of each image of a pair")
    # optimisation (the paper: Adam, lr 1e-3, no weight decay)
    epochs: int = _f(100, "training epochs")
    max_steps: Optional[int] = _f(None, "stop after this many optimizer steps (then checkpoint, evaluate, draw)")
    batch_size: int = _f(32, "image pairs per step over all processes")
    lr: float = _f(1e-3, "Adam learning rate")
    lr_milestones: List[float] = _f([0.7, 0.9], "fractions of --epochs where the learning rate is multiplied by "
                                                "--lr-gamma")
    lr_gamma: float = _f(0.1, "learning-rate factor at each milestone")
    amsgrad: bool = _f(True, "AMSGrad variant of Adam (the original's)")
    amp: bool = _f(True, "mixed precision on CUDA (bf16 where supported, else fp16 with grad scaling); ignored "
                         "on CPU")
    seed: int = _f(0, "seed of the initialisation, the data order, the warps and the jitter")
    workers: int = _f(0, "data-loader worker processes")
    checkpoint_every: int = _f(100, "checkpoint every N steps (0: off); also at every epoch's end")
    checkpoint_minutes: float = _f(5.0, "checkpoint when this many minutes passed since the last one (0: off)")
    # evaluation
    eval_pairs: int = _f(500, "test pairs for the matching errors")
    regression_train: int = _f(2000, "annotated images the landmark regressor is fitted on")
    regression_test: int = _f(1000, "test images of the landmark error")
    regression_steps: int = _f(1500, "optimizer steps of the landmark regressor")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def faces_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def input_size(self) -> int:
        return self.imwidth - 2 * self.crop


#: Fields that ``--resume`` may change: they do not alter what the run learns.
RESUMABLE_FIELDS = frozenset({"max_steps", "workers", "checkpoint_every", "checkpoint_minutes", "data_root",
                              "backend", "eval_pairs", "regression_train", "regression_test", "regression_steps"})

PRESETS = {
    # Runs end to end (train, evaluate, draw) on a 2-core CPU in a few minutes: 40x40 inputs, 20x20 embeddings,
    # faces with identity-specific marks (the benchmark on which DVE's claim is testable, see the README).
    "demo": dict(model="smallnet", model_width=0.5, embedding_dim=64, dataset="synthetic", imwidth=56, crop=8,
                 face_marks=30, train_count=2000, test_count=400, epochs=6, batch_size=16, lr=1e-3, lr_milestones=[0.8],
                 eval_pairs=200, regression_train=400, regression_test=200, regression_steps=400),
    # The paper's SmallNet: 100x100 images cropped to 70x70 -> 35x35 embeddings (configs/celeba/smallnet-64d-dve).
    "smallnet": dict(model="smallnet", embedding_dim=64, imwidth=100, crop=15, epochs=100, batch_size=32,
                     lr=1e-3, lr_milestones=[0.7, 0.9]),
    # The paper's Hourglass: 136x136 cropped to 96x96 -> 48x48 embeddings (configs/celeba/hourglass-64d-dve).
    "hourglass": dict(model="hourglass", embedding_dim=64, imwidth=136, crop=20, epochs=100, batch_size=16,
                      lr=1e-3, lr_milestones=[0.5]),
    # Beyond the dense formulation: 288 cropped to 256x256 -> 128x128 embeddings, C = 64 (needs a fused backend).
    "highres": dict(model="hourglass", embedding_dim=64, imwidth=288, crop=16, epochs=100, batch_size=16,
                    lr=1e-3, lr_milestones=[0.5]),
    # Trains on a 2-core CPU beyond the dense formulation's reach (25.9 GiB for one step, computed by
    # memory_report): half-width SmallNet, C = 16, 192x192 inputs -> 96x96 maps, 10 pairs, 28 steps (one epoch).
    "highres-cpu": dict(model="smallnet", model_width=0.5, embedding_dim=16, imwidth=274, crop=41, face_marks=30,
                        train_count=280, test_count=200, epochs=1, batch_size=10, lr=3e-3, lr_milestones=[],
                        eval_pairs=100, regression_train=280, regression_test=100, regression_steps=200),
    # The same faces at the paper's SmallNet resolution (70x70 inputs, 35x35 maps) and at twice it: 100 steps.
    "res1x": dict(model="smallnet", model_width=0.5, embedding_dim=16, imwidth=100, crop=15, face_marks=30,
                  train_count=400, test_count=200, epochs=1, batch_size=4, lr=3e-3, lr_milestones=[],
                  eval_pairs=64, regression_train=400, regression_test=200, regression_steps=150),
}
PRESETS["res2x"] = dict(PRESETS["res1x"], imwidth=200, crop=30)  # 140x140 inputs, 70x70 maps
# Table 1 on the demo's faces (python -m dve_kernels.train.table1): the paper's full-width SmallNet, 6 epochs of 2,000
# faces in 8 pairs (1,500 steps), lr 3e-3 divided by 10 for the last epoch; 6-7.5 min per run on one core.
PRESETS["table1"] = dict(PRESETS["demo"], model_width=1.0, batch_size=8, lr=3e-3, eval_pairs=100,
                         regression_train=200, regression_test=200, regression_steps=200)
# The same faces, warps and steps at twice the resolution (python -m dve_kernels.train.resolution): 112-px renders
# cropped to 80 px, 40x40 maps; the warps and crop are the same fractions of the image.
PRESETS["table1-2x"] = dict(PRESETS["table1"], imwidth=112, crop=16)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"expected a boolean (on/off, true/false, 1/0), got {text!r}")
    return value in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    """The flags: ``--preset``, ``--out``, ``--resume``, ``--no-eval`` and one flag per :class:`TrainConfig` field."""
    presets = "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                        for name, values in PRESETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m dve_kernels.train",
        description="Learn dense landmark embeddings with DVE (Thewlis et al., ICCV 2019), evaluate them "
                    "(matching and landmark regression) and draw them. Flags override the preset; a field's "
                    "default below is used when neither sets it.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help=f"starting values (default demo; on --resume, the checkpoint's). {presets}")
    parser.add_argument("--out", default=None, help="run directory (default runs/<preset>); a fresh run refuses "
                                                    "one that already holds a run")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from a checkpoint (default: <out>/checkpoint.pt) with the run's settings; "
                             f"only {', '.join(sorted(RESUMABLE_FIELDS))} may change")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    hints = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        kind, default = hints[f.name], (f.default if f.default is not MISSING else f.default_factory())
        flags = [f"--{f.name.replace('_', '-')}"] + ([f.metadata["short"]] if "short" in f.metadata else [])
        kwargs = dict(dest=f.name, default=None, help=f"{f.metadata['help']} (default {default})",
                      choices=f.metadata.get("choices"))
        if kind is bool:
            kwargs.update(type=_bool, metavar="on|off")
        elif kind == List[float]:
            kwargs.update(type=float, nargs="*")
        else:
            kwargs.update(type={Optional[int]: int, Optional[str]: str}.get(kind, kind))
        parser.add_argument(*flags, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace, base: Optional[dict] = None) -> TrainConfig:
    """The preset (``demo`` unless given), or ``base`` (a checkpoint's config) when given, overridden by flags."""
    values = dict(base) if base is not None else dict(PRESETS[args.preset or "demo"])
    if base is not None and args.preset is not None:
        values.update(PRESETS[args.preset])
    values.update({f.name: getattr(args, f.name) for f in fields(TrainConfig)
                   if getattr(args, f.name, None) is not None})
    config = TrainConfig.from_dict(values)
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    if config.input_size < 8:
        raise ValueError(f"imwidth={config.imwidth} with crop={config.crop} leaves a {config.input_size}px input")
    if config.input_size % 2:
        raise ValueError(f"the network input imwidth - 2*crop = {config.input_size} must be even (stride 2)")
    for name in ("epochs", "batch_size", "embedding_dim", "num_aux", "max_steps", "model_dilation"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if not 0 < config.face_detail <= 1:
        raise ValueError(f"face_detail must be in (0, 1], got {config.face_detail}")
    if config.checkpoint_every < 0 or config.checkpoint_minutes < 0:
        raise ValueError(f"checkpoint_every and checkpoint_minutes must be >= 0, got {config.checkpoint_every} and "
                         f"{config.checkpoint_minutes}")
