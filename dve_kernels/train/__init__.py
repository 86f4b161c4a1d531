"""The thin reference training app: DVE end to end (models, data, training loop, evaluation, figures).

Run ``python -m dve_kernels.train --help``; evaluate a run with ``python -m dve_kernels.train.evaluate RUN_DIR``;
the paper's Table 1 on the built-in data with ``python -m dve_kernels.train.table1``.
"""

from .config import PRESETS, TrainConfig
from .loop import train
from .models import Hourglass, SmallNet, build_model

__all__ = ["PRESETS", "TrainConfig", "SmallNet", "Hourglass", "build_model", "train", "main"]


def main(argv=None) -> int:
    """Console-script entry point (``dve-train``); imported late so that ``python -m`` runs ``__main__`` once."""
    from .__main__ import main as _main

    return _main(argv)
