"""Training configuration: the presets and the command-line flags that override them."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional

__all__ = ["TrainConfig", "PRESETS", "build_parser", "config_from_args"]


@dataclass
class TrainConfig:
    # what to learn
    model: str = "smallnet"
    embedding_dim: int = 64
    dve: bool = True
    num_aux: int = 1
    pow: float = 0.5
    backend: str = "auto"
    # data
    dataset: str = "synthetic"
    data_root: Optional[str] = None
    imwidth: int = 100        # images are resized to imwidth x imwidth, warped, then cropped
    crop: int = 15            # pixels removed on every side after warping: network input = imwidth - 2 crop
    train_count: int = 20000  # synthetic faces: training identities
    test_count: int = 1000    # synthetic faces: test identities
    color_jitter: float = 0.4
    # optimisation (the paper: Adam, lr 1e-3, no weight decay, 100 epochs)
    epochs: int = 100
    max_steps: Optional[int] = None
    batch_size: int = 32      # pairs per step, over all processes
    lr: float = 1e-3
    lr_milestones: List[float] = field(default_factory=lambda: [0.7, 0.9])  # fractions of the epochs
    lr_gamma: float = 0.1
    amsgrad: bool = True
    amp: bool = True          # mixed precision on CUDA (ignored on CPU)
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 0  # also checkpoint every N steps (0: only at the end of every epoch)
    # evaluation
    eval_pairs: int = 500
    regression_train: int = 2000
    regression_test: int = 1000
    regression_steps: int = 1500
    model_width: float = 1.0   # SmallNet channel multiplier (1.0 = the paper's)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def input_size(self) -> int:
        return self.imwidth - 2 * self.crop


PRESETS = {
    # Runs end to end (train, evaluate, draw) on a 2-core CPU in about ten minutes.
    "demo": dict(model="smallnet", model_width=0.5, embedding_dim=64, dataset="synthetic", imwidth=56, crop=8,
                 train_count=2000, test_count=400, epochs=6, batch_size=16, lr=1e-3, lr_milestones=[0.8],
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
}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (on/off, true/false, 1/0), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dve_kernels.train",
        description="Learn dense landmark embeddings with DVE (Thewlis et al., ICCV 2019), evaluate them "
                    "(matching and landmark regression) and draw them. Flags override the preset.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="continue from a checkpoint (default: <out>/checkpoint.pt)")
    parser.add_argument("--no-eval", action="store_true", help="train only")
    add = parser.add_argument
    add("--model", choices=["smallnet", "hourglass"])
    add("--embedding-dim", "-C", dest="embedding_dim", type=int)
    add("--dve", type=_bool, help="on: DVE loss (eq. 6); off: the plain warp loss (eq. 3)")
    add("--num-aux", dest="num_aux", type=int)
    add("--pow", type=float)
    add("--backend", choices=["auto", "triton", "cpu", "reference"],
        help="loss backend: auto = triton on CUDA, the C++ kernels on CPU; reference = the dense path")
    add("--dataset", choices=["synthetic", "folder", "celeba", "aflw", "300w"],
        help="synthetic (built in, default), folder (any images), celeba (+MAFL), aflw (MTFL-style), 300w")
    add("--data-root", dest="data_root", help="the dataset's folder in its published layout")
    add("--imwidth", type=int, help="images are resized to this square size before warping")
    add("--crop", type=int, help="pixels cut from every side after warping (input = imwidth - 2 crop)")
    add("--train-count", dest="train_count", type=int)
    add("--test-count", dest="test_count", type=int)
    add("--color-jitter", dest="color_jitter", type=float)
    add("--epochs", type=int, help="training epochs")
    add("--max-steps", dest="max_steps", type=int,
        help="stop after this many optimizer steps (still checkpoints, evaluates and draws)")
    add("--batch-size", dest="batch_size", type=int, help="image pairs per step over all processes")
    add("--lr", type=float)
    add("--lr-milestones", dest="lr_milestones", type=float, nargs="*",
        help="epochs (as fractions of --epochs) where the learning rate is multiplied by --lr-gamma")
    add("--lr-gamma", dest="lr_gamma", type=float)
    add("--amp", type=_bool, help="mixed precision on CUDA (bf16 where supported, else fp16 + grad scaling)")
    add("--seed", type=int)
    add("--workers", type=int)
    add("--checkpoint-every", dest="checkpoint_every", type=int,
        help="also checkpoint every N steps (checkpoints are always written at the end of every epoch)")
    add("--eval-pairs", dest="eval_pairs", type=int, help="test pairs for the matching errors")
    add("--regression-train", dest="regression_train", type=int)
    add("--regression-test", dest="regression_test", type=int)
    add("--regression-steps", dest="regression_steps", type=int)
    add("--model-width", dest="model_width", type=float, help="SmallNet channel multiplier (1 = the paper's)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = dict(PRESETS[args.preset])
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    config = TrainConfig.from_dict(values)
    validate_config(config)
    return config


def validate_config(config: TrainConfig) -> None:
    if config.input_size < 8:
        raise ValueError(f"imwidth={config.imwidth} with crop={config.crop} leaves a {config.input_size}px input")
    if config.input_size % 2:
        raise ValueError(f"the network input imwidth - 2*crop = {config.input_size} must be even (stride 2)")
    for name in ("epochs", "batch_size", "embedding_dim", "num_aux"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {config.max_steps}")
