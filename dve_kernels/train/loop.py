"""The training loop: DVE on random TPS pairs, Adam, step schedule, AMP on GPU, DDP, exact resume.

Every random draw is seeded: the model by ``seed``, each epoch's image order by ``(seed, epoch)``, each step's
warps and jitter by ``(seed, step, rank)``; so a checkpoint (model, optimizer, scheduler, AMP scaler, epoch, batch
index, step) continues a killed run to exactly the result of an uninterrupted one. Run directories: README.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .. import DVELoss
from ..warps import TPSWarper
from .checkpoint import (CHECKPOINT_NAME, FORMAT, CheckpointError, load_checkpoint, remove_stale_temporaries,
                         save_checkpoint)
from .config import RESUMABLE_FIELDS, TrainConfig, build_parser, config_from_args
from .data import SPLITS, DatasetError, config_dataset
from .evaluate import evaluate_run, print_summary
from .models import build_model, normalize_images

__all__ = ["main", "train", "Trainer", "RunDirError", "check_run_dir", "color_jitter", "METRICS_LOG"]

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


def color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in ``[1 - strength, 1 + strength]``."""
    if strength <= 0:
        return images
    batch = images.shape[0]
    factors = (1.0 + (torch.rand(batch, 3, generator=generator, dtype=torch.float64) * 2 - 1) * strength)
    brightness, contrast, saturation = factors.to(images).view(batch, 3, 1, 1, 1).unbind(1)

    def grey(x):
        return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]

    out = images * brightness
    mean = grey(out).mean((2, 3), keepdim=True)
    out = (out - mean) * contrast + mean
    luma = grey(out)
    return ((out - luma) * saturation + luma).clamp(0.0, 1.0)


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
            # fields added since the checkpoint was written read as their defaults
            saved, now = TrainConfig.from_dict(ckpt["config"]).to_dict(), config.to_dict()
            changed = [f"{k} ({saved.get(k)!r} -> {now[k]!r})" for k in sorted(now)
                       if k not in RESUMABLE_FIELDS and saved.get(k) != now[k]]
            if changed:
                raise RunDirError(f"--resume from {path} would change {', '.join(changed)}: these alter the "
                                  f"experiment; start a new run in another --out instead")
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

    def _load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.batch_index, self.global_step = ckpt["epoch"], ckpt["batch_index"], ckpt["global_step"]
        log = self.out / METRICS_LOG
        if self.rank == 0:
            if log.is_file():  # drop log lines of steps that will be re-run
                log.write_text("".join(line + "\n" for line in log.read_text().splitlines()
                                       if line.strip() and json.loads(line).get("step", 0) <= self.global_step))
            print(f"resumed {self.out}: epoch {self.epoch}, step {self.global_step}", file=sys.stderr, flush=True)

    def _checkpoint(self) -> None:
        if self.rank == 0:  # tensors and plain containers only (loaded with weights_only=True); no RNG state needed
            save_checkpoint(self.out / CHECKPOINT_NAME, {
                "format": FORMAT, "config": self.config.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "batch_index": self.batch_index,
                "global_step": self.global_step, "world_size": self.world})
        self._last_checkpoint = time.monotonic()
        _barrier(self.world)

    def _checkpoint_due(self) -> bool:
        every, minutes = self.config.checkpoint_every, self.config.checkpoint_minutes
        by_step = every and self.global_step % every == 0
        by_time = minutes and time.monotonic() - self._last_checkpoint >= 60 * minutes
        due = torch.tensor(int(bool(by_step or by_time)), device=self.device)
        if self.world > 1:  # every process must agree, or the barrier hangs
            dist.broadcast(due, 0)
        return bool(due)

    def _epoch_batches(self, epoch: int):
        order = torch.randperm(len(self.dataset), generator=_step_generator(self.config.seed, 1, epoch))
        size, per_rank = self.config.batch_size, self.config.batch_size // self.world  # this rank's share
        batches = [order[b * size + self.rank * per_rank:b * size + (self.rank + 1) * per_rank].tolist()
                   for b in range(self.batch_index, self.steps_per_epoch)]
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
        total = min(config.epochs * self.steps_per_epoch, config.max_steps or math.inf)
        progress = tqdm(total=total, initial=self.global_step, desc="train", unit="step", dynamic_ncols=True,
                        file=sys.stderr, disable=not self.progress)
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
        progress.close()
        return {"global_step": self.global_step, "epoch": self.epoch, "seconds": time.time() - started}


def train(config: TrainConfig, out, resume: Optional[str] = None, evaluate: bool = True,
          device: Optional[str] = None, progress: bool = True) -> dict:
    """Train (and, unless ``evaluate=False``, evaluate and draw) in ``out``. Returns a summary dict."""
    trainer = Trainer(config, out, resume=resume, device=device, progress=progress)
    summary = trainer.run()
    summary.update(checkpoint=str(Path(out) / CHECKPOINT_NAME), metrics_log=str(Path(out) / METRICS_LOG))
    if evaluate and trainer.rank == 0:
        summary.update(evaluate_run(trainer.model, config, Path(out), device=trainer.device, progress=progress))
    _barrier(trainer.world)
    if trainer.world > 1:
        dist.destroy_process_group()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dve_kernels.train`` (``dve-train``): train, evaluate and draw (see ``--help``)."""
    args = build_parser().parse_args(argv)
    out = Path(args.out or f"runs/{args.preset or 'demo'}")
    try:
        base = None
        if args.resume is not None:  # the run's own settings, then the flags given now (checked by the trainer)
            path = out / CHECKPOINT_NAME if args.resume == "auto" else Path(args.resume)
            if args.resume == "auto" and not path.exists():
                raise CheckpointError(f"nothing to resume in {out}: it has no {CHECKPOINT_NAME}")
            base = load_checkpoint(path)["config"]
        summary = train(config_from_args(args, base=base), out, resume=args.resume, evaluate=not args.no_eval)
    except (ValueError, CheckpointError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if "metrics" in summary:
        print_summary(summary)
    print(f"checkpoint: {summary['checkpoint']}")
    return 0
