"""The training loop: DVE on random TPS pairs, Adam, step schedule, AMP on GPU, DDP, exact resume.

Determinism and resume: the model is initialised from ``seed``; each epoch's image order comes from a generator
seeded with ``(seed, epoch)``; each step's warps and colour jitter from one seeded with ``(seed, step, rank)``.
Nothing else is random, so a checkpoint (model, optimizer, scheduler, AMP scaler, epoch, batch index, step) lets
a killed run continue to exactly the result of an uninterrupted one. Checkpoints are written at the start, every
``checkpoint_every`` steps, whenever ``checkpoint_minutes`` have passed, at every epoch's end and at the end.

A run directory holds one run: a fresh run refuses a directory that already holds one, and ``--resume`` refuses
settings that would change the experiment (see ``config.RESUMABLE_FIELDS``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .. import DVELoss
from ..warps import TPSWarper
from .checkpoint import CHECKPOINT_NAME, FORMAT, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .config import RESUMABLE_FIELDS, TrainConfig
from .data import SPLITS, config_dataset
from .evaluate import evaluate_run
from .models import build_model, normalize_images

__all__ = ["train", "Trainer", "RunDirError", "check_run_dir", "changed_settings", "color_jitter", "METRICS_LOG"]

METRICS_LOG = "metrics.jsonl"
_RUN_FILES = (CHECKPOINT_NAME, METRICS_LOG, "metrics.json")


class RunDirError(ValueError):
    """The run directory (``--out``) or the data folder cannot be used; the message says why."""


def _check_writable(folder: Path, what: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise RunDirError(f"{what} {folder} is not writable: {error.strerror or error}") from None


def check_run_dir(config: TrainConfig, out, resume: bool) -> None:
    """Before any work: ``out`` is a writable folder that holds no run (unless resuming); the data folder exists
    (or, for the synthetic faces, is a writable cache folder)."""
    out = Path(out)
    _check_writable(out, "--out")
    used = [name for name in _RUN_FILES if (out / name).exists()]
    if used and not resume:
        raise RunDirError(f"--out {out} already holds a run ({', '.join(used)}): continue it with --resume, or "
                          f"choose another --out (or delete that folder) to start a new one")
    root = config.data_root
    if root is not None:
        if config.dataset == "synthetic":
            _check_writable(Path(root), "--data-root (the synthetic faces' cache)")
        elif not Path(root).is_dir():
            raise RunDirError(f"--data-root {root} is not a folder (dataset {config.dataset!r})")


def changed_settings(saved: dict, config: TrainConfig) -> dict:
    """``{field: (saved, now)}`` of the settings that alter the experiment and differ from a checkpoint's."""
    now = config.to_dict()
    return {key: (saved.get(key), now[key]) for key in sorted(now)
            if key not in RESUMABLE_FIELDS and saved.get(key) != now[key]}


def color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in ``[1 - strength, 1 + strength]``."""
    if strength <= 0:
        return images
    batch = images.shape[0]
    factors = (1.0 + (torch.rand(batch, 3, generator=generator, dtype=torch.float64) * 2 - 1) * strength)
    factors = factors.to(device=images.device, dtype=images.dtype)
    brightness, contrast, saturation = (factors[:, i].view(batch, 1, 1, 1) for i in range(3))
    out = images * brightness
    grey = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
    out = (out - grey.mean((2, 3), keepdim=True)) * contrast + grey.mean((2, 3), keepdim=True)
    grey = (0.299 * out[:, 0:1] + 0.587 * out[:, 1:2] + 0.114 * out[:, 2:3])
    out = (out - grey) * saturation + grey
    return out.clamp(0.0, 1.0)


def _step_generator(seed: int, *keys: int) -> torch.Generator:
    # A distinct, reproducible stream per (seed, keys): numpy's SeedSequence mixes them well.
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def _init_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


class Trainer:
    """One training run in ``out``; ``run()`` trains (resuming if asked) and returns a summary."""

    def __init__(self, config: TrainConfig, out, resume: Optional[str] = None, device: Optional[str] = None,
                 progress: bool = True):
        self.config = config
        self.out = Path(out)
        self.rank, self.world, local_rank = _init_distributed()
        if config.batch_size % self.world:
            raise ValueError(f"batch_size={config.batch_size} must be divisible by the {self.world} processes")
        ckpt = None
        if resume is not None:  # read and check the checkpoint before any work
            path = self.out / CHECKPOINT_NAME if resume == "auto" else Path(resume)
            ckpt = load_checkpoint(path)
            changed = changed_settings(ckpt["config"], config)
            if changed:
                listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in ((k, *v) for k, v in changed.items()))
                raise RunDirError(f"--resume from {path} would change {listed}: these alter the experiment; start "
                                  f"a new run in another --out instead")
            if ckpt.get("world_size", 1) != self.world:
                raise RunDirError(f"{path} was written by {ckpt.get('world_size')} processes; resuming with "
                                  f"{self.world} would change the data order")
        if self.rank == 0:
            check_run_dir(config, self.out, resume=ckpt is not None)
            remove_stale_temporaries(self.out)
        _barrier(self.world)
        self.device = torch.device(device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.progress = progress and self.rank == 0

        torch.manual_seed(config.seed)
        self.model = build_model(config).to(self.device)
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.criterion = DVELoss(pow=config.pow, dve=config.dve, num_aux=config.num_aux, backend=config.backend)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=0.0,
                                          amsgrad=config.amsgrad)
        milestones = sorted(int(round(m * config.epochs)) for m in config.lr_milestones)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=config.lr_gamma)
        self.use_amp = bool(config.amp) and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.warper = TPSWarper(crop=config.crop)

        self.dataset = config_dataset(config, self.out, SPLITS[config.dataset][0], config.train_count)
        self.steps_per_epoch = len(self.dataset) // config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set has {len(self.dataset)} images, fewer than one batch of "
                             f"{config.batch_size}")
        self.epoch = self.batch_index = self.global_step = 0
        if ckpt is not None:
            self._load(ckpt)

    def state(self) -> dict:
        return {"format": FORMAT, "config": self.config.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "batch_index": self.batch_index,
                "global_step": self.global_step, "world_size": self.world}

    def _load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.batch_index, self.global_step = ckpt["epoch"], ckpt["batch_index"], ckpt["global_step"]
        log = self.out / METRICS_LOG
        if self.rank == 0 and log.is_file():  # drop log lines of steps that will be re-run
            kept = [line for line in log.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= self.global_step]
            log.write_text("".join(line + "\n" for line in kept))
        if self.rank == 0:
            print(f"resumed {self.out}: epoch {self.epoch}, step {self.global_step}", file=sys.stderr, flush=True)

    def _checkpoint(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.out / CHECKPOINT_NAME, self.state())
        self._last_checkpoint = time.monotonic()
        _barrier(self.world)

    def _checkpoint_due(self) -> bool:
        config = self.config
        by_step = config.checkpoint_every and self.global_step % config.checkpoint_every == 0
        elapsed = time.monotonic() - self._last_checkpoint
        by_time = config.checkpoint_minutes and elapsed >= 60 * config.checkpoint_minutes
        due = torch.tensor(int(bool(by_step or by_time)), device=self.device)
        if self.world > 1:  # every process must agree, or the barrier hangs
            dist.broadcast(due, 0)
        return bool(due)

    def _epoch_batches(self, epoch: int):
        order = torch.randperm(len(self.dataset), generator=_step_generator(self.config.seed, 1, epoch))
        per_rank = self.config.batch_size // self.world
        batches = []
        for b in range(self.batch_index, self.steps_per_epoch):
            chunk = order[b * self.config.batch_size:(b + 1) * self.config.batch_size]
            batches.append(chunk[self.rank * per_rank:(self.rank + 1) * per_rank].tolist())
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.config.workers,
                                           pin_memory=self.device.type == "cuda")

    def loss_on_batch(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """Warp, jitter and normalise a batch, embed the interleaved pairs, and apply the criterion."""
        config = self.config
        generator = _step_generator(config.seed, 2, step, self.rank)
        pairs = self.warper(images.to(self.device, non_blocking=True), generator=generator)
        pairs.x = normalize_images(color_jitter(pairs.x, config.color_jitter, generator))
        pairs.x_prime = normalize_images(color_jitter(pairs.x_prime, config.color_jitter, generator))
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            feats = self.ddp_model(pairs.interleaved())
        return self.criterion(feats, pairs.grid)

    def run(self) -> dict:
        config = self.config
        total = config.epochs * self.steps_per_epoch
        total = min(total, config.max_steps) if config.max_steps is not None else total
        progress = None
        if self.progress:
            from tqdm import tqdm

            progress = tqdm(total=total, initial=self.global_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr)
        started = time.time()
        self._checkpoint()  # from the start: a kill at any step leaves something to resume
        self.model.train()
        while self.epoch < config.epochs and self.global_step < total:
            for batch in self._epoch_batches(self.epoch):
                loss = self.loss_on_batch(batch["image"], self.global_step)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                value = loss.detach().float()
                if self.world > 1:
                    dist.all_reduce(value)
                    value /= self.world
                value = value.item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"loss became {value} at step {self.global_step}")
                self.global_step += 1
                self.batch_index += 1
                if self.rank == 0:
                    with open(self.out / METRICS_LOG, "a") as handle:
                        handle.write(json.dumps({"step": self.global_step, "epoch": self.epoch, "loss": value,
                                                 "lr": self.optimizer.param_groups[0]["lr"],
                                                 "time_s": round(time.time() - started, 3)}) + "\n")
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(epoch=self.epoch, loss=f"{value:.4f}")
                if self.global_step >= total:
                    break
                if self._checkpoint_due():
                    self._checkpoint()
            if self.batch_index >= self.steps_per_epoch:
                self.epoch += 1
                self.batch_index = 0
                self.scheduler.step()
            self._checkpoint()
        if progress is not None:
            progress.close()
        return {"global_step": self.global_step, "epoch": self.epoch, "seconds": time.time() - started}


def train(config: TrainConfig, out, resume: Optional[str] = None, evaluate: bool = True,
          device: Optional[str] = None, progress: bool = True) -> dict:
    """Train (and, unless ``evaluate=False``, evaluate and draw) in ``out``. Returns a summary dict."""
    trainer = Trainer(config, out, resume=resume, device=device, progress=progress)
    summary = trainer.run()
    summary["checkpoint"] = str(Path(out) / CHECKPOINT_NAME)
    summary["metrics_log"] = str(Path(out) / METRICS_LOG)
    if evaluate and trainer.rank == 0:
        summary.update(evaluate_run(trainer.model, config, Path(out), device=trainer.device, progress=progress))
    _barrier(trainer.world)
    if trainer.world > 1:
        dist.destroy_process_group()
    return summary
