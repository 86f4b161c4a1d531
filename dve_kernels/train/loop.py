"""The training loop: DVE on random TPS pairs, Adam, step schedule, AMP on GPU, DDP, exact resume.

Determinism and resume: the model is initialised from ``seed``; each epoch's image order comes from a generator
seeded with ``(seed, epoch)``; each step's warps and colour jitter from one seeded with ``(seed, step, rank)``. A
checkpoint (model, optimizer, scheduler, AMP scaler, RNG states, epoch, batch index, step) therefore lets a killed
run continue to exactly the result of an uninterrupted one. Checkpoints hold only tensors and plain Python
containers and are loaded with ``torch.load(..., weights_only=True)``; they are written to a temporary file and
moved into place with ``os.replace``, so a kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from .. import dense_correlation_loss, dense_correlation_loss_dve
from ..warps import TPSWarper
from .config import TrainConfig
from .data import IMAGE_MEAN, IMAGE_STD, SPLITS, build_dataset, data_root
from .models import build_model

__all__ = ["train", "Trainer", "save_checkpoint", "load_checkpoint", "normalize_images", "color_jitter",
           "CHECKPOINT_NAME", "METRICS_LOG"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_LOG = "metrics.jsonl"
#: Test hook: exit abruptly (as if killed) after this many optimizer steps.
_EXIT_AFTER_STEP_ENV = "DVE_TRAIN_EXIT_AFTER_STEP"


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` RGB ``(B, 3, H, W)`` to the original's normalisation (CelebA mean and std)."""
    mean = images.new_tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (images - mean) / std


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


# ------------------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_gauss"][0], state["numpy_gauss"][1]))
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` atomically: a temporary file in the same folder, flushed, then ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: a checkpoint file can never run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


# -------------------------------------------------------------------------------------------------- distributed
def _init_distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _print(rank: int, *args) -> None:
    if rank == 0:
        print(*args, flush=True)


# ------------------------------------------------------------------------------------------------------ trainer
class Trainer:
    """One training run in ``out``; ``run()`` trains (resuming if asked) and returns the final state."""

    def __init__(self, config: TrainConfig, out, resume: Optional[str] = None, device: Optional[str] = None,
                 progress: bool = True):
        self.config = config
        self.out = Path(out)
        self.rank, self.world, local_rank = _init_distributed()
        if config.batch_size % self.world:
            raise ValueError(f"batch_size={config.batch_size} must be divisible by the {self.world} processes")
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.progress = progress and self.rank == 0
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        _barrier(self.world)

        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        self.model = build_model(config.model, config.embedding_dim,
                                 **({"width": config.model_width} if config.model == "smallnet" else {}))
        self.model.to(self.device)
        self.ddp_model = self.model
        if self.world > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=0.0,
                                          amsgrad=config.amsgrad)
        milestones = sorted(int(round(m * config.epochs)) for m in config.lr_milestones)
        gamma = config.lr_gamma
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: gamma ** sum(epoch >= m for m in milestones))
        self.use_amp = bool(config.amp) and self.device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.warper = TPSWarper(crop=config.crop)

        train_split = SPLITS[config.dataset][0]
        self.dataset = build_dataset(config.dataset, data_root(config, self.out), train_split, config.imwidth,
                                     count=config.train_count, seed=config.seed)
        self.steps_per_epoch = len(self.dataset) // config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set has {len(self.dataset)} images, fewer than one batch of "
                             f"{config.batch_size}")

        self.epoch = 0
        self.batch_index = 0
        self.global_step = 0
        if resume is not None:
            path = self.out / CHECKPOINT_NAME if resume == "auto" else Path(resume)
            self._resume(path)

    # -- state
    def state(self) -> dict:
        return {
            "format": 1,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "global_step": self.global_step,
            "world_size": self.world,
            "rng": _rng_state(),
        }

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt.get("world_size", 1) != self.world:
            raise ValueError(f"{path} was written by {ckpt.get('world_size')} processes; resuming with "
                             f"{self.world} would change the data order")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.batch_index, self.global_step = ckpt["epoch"], ckpt["batch_index"], ckpt["global_step"]
        _set_rng_state({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in ckpt["rng"].items()})
        if self.rank == 0:  # drop log lines of steps that will be re-run
            log = self.out / METRICS_LOG
            if log.is_file():
                kept = [line for line in log.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= self.global_step]
                log.write_text("".join(line + "\n" for line in kept))
        _print(self.rank, f"resumed from {path}: epoch {self.epoch}, step {self.global_step}")

    def _checkpoint(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.out / CHECKPOINT_NAME, self.state())
        _barrier(self.world)

    # -- data
    def _epoch_batches(self, epoch: int):
        order = torch.randperm(len(self.dataset), generator=_step_generator(self.config.seed, 1, epoch))
        per_rank = self.config.batch_size // self.world
        batches = []
        for b in range(self.steps_per_epoch):
            chunk = order[b * self.config.batch_size:(b + 1) * self.config.batch_size]
            batches.append(chunk[self.rank * per_rank:(self.rank + 1) * per_rank].tolist())
        return batches

    def _loader(self, batches):
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=self.config.workers,
                                           pin_memory=self.device.type == "cuda")

    # -- one step
    def loss_on_batch(self, images: torch.Tensor, step: int) -> torch.Tensor:
        config = self.config
        generator = _step_generator(config.seed, 2, step, self.rank)
        images = images.to(self.device, non_blocking=True)
        pairs = self.warper(images, generator=generator)
        x = normalize_images(color_jitter(pairs.x, config.color_jitter, generator))
        x_prime = normalize_images(color_jitter(pairs.x_prime, config.color_jitter, generator))
        batch = x.shape[0]
        inputs = torch.stack((x, x_prime), 1).reshape(2 * batch, *x.shape[1:])
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            feats = self.ddp_model(inputs)
        meta = {"grid": pairs.grid}
        if config.dve:
            return dense_correlation_loss_dve(feats, meta, pow=config.pow, num_aux=config.num_aux,
                                              backend=config.backend)
        return dense_correlation_loss(feats, meta, pow=config.pow, backend=config.backend)

    # -- the loop
    def run(self) -> dict:
        config = self.config
        total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        exit_after = int(os.environ.get(_EXIT_AFTER_STEP_ENV, "0"))
        log_path = self.out / METRICS_LOG
        progress = None
        if self.progress:
            from tqdm import tqdm
            progress = tqdm(total=total_steps, initial=self.global_step, desc="train", unit="step",
                            dynamic_ncols=True, file=sys.stderr)
        started = time.time()
        self.model.train()
        while self.epoch < config.epochs and self.global_step < total_steps:
            batches = self._epoch_batches(self.epoch)[self.batch_index:]
            for batch in self._loader(batches):
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
                    with open(log_path, "a") as handle:
                        handle.write(json.dumps({"step": self.global_step, "epoch": self.epoch, "loss": value,
                                                 "lr": self.optimizer.param_groups[0]["lr"],
                                                 "time_s": round(time.time() - started, 3)}) + "\n")
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(epoch=self.epoch, loss=f"{value:.4f}")
                if self.global_step >= total_steps:
                    break
                if config.checkpoint_every and self.global_step % config.checkpoint_every == 0:
                    self._checkpoint()
                if exit_after and self.global_step >= exit_after:
                    os._exit(137)
            if self.batch_index >= self.steps_per_epoch:
                self.epoch += 1
                self.batch_index = 0
                self.scheduler.step()
            self._checkpoint()
            if exit_after and self.global_step >= exit_after:
                os._exit(137)
        if progress is not None:
            progress.close()
        return {"global_step": self.global_step, "epoch": self.epoch, "seconds": time.time() - started}


def train(config: TrainConfig, out, resume: Optional[str] = None, evaluate: bool = True,
          device: Optional[str] = None, progress: bool = True) -> dict:
    """Train (and, unless ``evaluate=False``, evaluate and draw) in ``out``. Returns a summary dict."""
    from .evaluate import evaluate_run

    trainer = Trainer(config, out, resume=resume, device=device, progress=progress)
    summary = trainer.run()
    summary["checkpoint"] = str(Path(out) / CHECKPOINT_NAME)
    summary["metrics_log"] = str(Path(out) / METRICS_LOG)
    if evaluate and trainer.rank == 0:
        summary.update(evaluate_run(trainer.model, config, Path(out), device=trainer.device))
    _barrier(trainer.world)
    if trainer.world > 1:
        dist.destroy_process_group()
    return summary
