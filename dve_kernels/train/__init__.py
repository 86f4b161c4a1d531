"""The thin reference training app: DVE end to end (models, data, training loop, evaluation, figures); see
``python -m dve_kernels.train --help`` and the README's "Reference training"."""

from .config import PRESETS, TrainConfig
from .loop import main, train
from .models import Hourglass, SmallNet, build_model

__all__ = ["PRESETS", "TrainConfig", "SmallNet", "Hourglass", "build_model", "train", "main"]
