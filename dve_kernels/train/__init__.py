"""The thin reference training app: DVE end to end (models, data, training loop, evaluation, figures).

Run ``python -m dve_kernels.train --help``; evaluate a run with ``python -m dve_kernels.train.evaluate RUN_DIR``.
"""

from .config import PRESETS, TrainConfig
from .models import Hourglass, SmallNet, build_model

__all__ = ["PRESETS", "TrainConfig", "SmallNet", "Hourglass", "build_model", "train", "main"]


def train(*args, **kwargs):
    """See :func:`dve_kernels.train.loop.train`."""
    from .loop import train as _train

    return _train(*args, **kwargs)


def main(argv=None) -> int:
    """Console-script entry point (``dve-train``)."""
    from .__main__ import main as _main

    return _main(argv)
