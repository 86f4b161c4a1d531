"""The training loop: loss goes down, resume after a kill is exact, DDP with 2 CPU processes, checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dve_kernels.train.config import PRESETS, TrainConfig, build_parser, config_from_args
from dve_kernels.train.loop import CHECKPOINT_NAME, METRICS_LOG, load_checkpoint, train

REPO = Path(__file__).resolve().parents[1]

# A tiny SmallNet on tiny synthetic faces: 28px images cropped to 20px, 10x10 embeddings.
TINY = ["--imwidth", "28", "--crop", "4", "--model-width", "0.25", "-C", "8", "--train-count", "32",
        "--test-count", "16", "--batch-size", "8", "--backend", "reference", "--seed", "3"]


def _run(args, env=None, timeout=240):
    full_env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / METRICS_LOG).read_text().splitlines()]


def _tiny_config(**overrides):
    args = build_parser().parse_args(["--preset", "demo", *TINY])
    config = config_from_args(args)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def test_short_training_run_decreases_the_loss_and_evaluates(tmp_path):
    config = _tiny_config(epochs=10, lr=3e-3, lr_milestones=[], eval_pairs=6, regression_train=16,
                          regression_test=16, regression_steps=30)
    summary = train(config, tmp_path, progress=False)
    losses = _losses(tmp_path)
    assert len(losses) == 40 and summary["global_step"] == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.15, (first, last)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("same_identity_error", "different_identity_error", "landmark_error_iod"):
        assert isinstance(metrics[key], float) and metrics[key] >= 0
    assert metrics["matching"]["pairs"] == 6
    for name in ("matches.png", "loss_curve.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # atomic writes leave nothing behind


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    config = _tiny_config(epochs=1, max_steps=2)
    train(config, tmp_path, evaluate=False, progress=False)
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0 and ckpt["batch_index"] == 2
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "rng", "config", "scaler"}
    assert TrainConfig.from_dict(ckpt["config"]) == config
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)
    # A pickled object that is not plain data is refused by the loader.
    torch.save({"bad": PRESETS.__class__}, tmp_path / "evil.pt")
    with pytest.raises(Exception):
        load_checkpoint(tmp_path / "evil.pt")


def test_resume_after_kill_is_bitwise_equal(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ["-m", "dve_kernels.train", "--preset", "demo", *TINY, "--epochs", "3", "--no-eval"]
    done = _run([*args, "--out", str(whole)])
    assert done.returncode == 0, done.stderr[-2000:]
    # Killed in the middle of epoch 2 (step 6 of 12): the last checkpoint is the end of epoch 1 (step 4).
    crashed = _run([*args, "--out", str(killed)], env={"DVE_TRAIN_EXIT_AFTER_STEP": "6"})
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    partial = load_checkpoint(killed / CHECKPOINT_NAME)
    assert partial["global_step"] == 4 and partial["epoch"] == 1
    assert len(_losses(killed)) == 6
    resumed = _run([*args, "--out", str(killed), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_checkpoint(whole / CHECKPOINT_NAME), load_checkpoint(killed / CHECKPOINT_NAME)
    assert a["global_step"] == b["global_step"] == 12
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert torch.equal(state[field], b["optimizer"]["state"][key][field])
    assert a["scheduler"] == b["scheduler"]
    assert _losses(whole) == _losses(killed)  # the re-run steps replaced the logged ones
    # And the run did train: the final model differs from the first checkpoint's.
    assert any(not torch.equal(t, partial["model"][n]) for n, t in a["model"].items())


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    done = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dve_kernels.train",
                 "--preset", "demo", *TINY, "--epochs", "2", "--no-eval", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["world_size"] == 2 and ckpt["global_step"] == 8
    losses = _losses(out)
    assert len(losses) == 8 and all(0 < value < 10 for value in losses)
    # Resuming with another number of processes would change the data order: refused.
    single = _run(["-m", "dve_kernels.train", "--preset", "demo", *TINY, "--epochs", "3", "--no-eval",
                   "--out", str(out), "--resume"])
    assert single.returncode != 0 and "written by 2 processes" in single.stderr


def test_cli_rejects_bad_configuration(tmp_path):
    bad = _run(["-m", "dve_kernels.train", "--imwidth", "21", "--crop", "5", "--out", str(tmp_path)])
    assert bad.returncode == 2 and "must be even" in bad.stderr
    assert PRESETS["highres"]["imwidth"] - 2 * PRESETS["highres"]["crop"] == 256  # 128x128 embeddings
    assert PRESETS["smallnet"]["imwidth"] - 2 * PRESETS["smallnet"]["crop"] == 70
    assert PRESETS["hourglass"]["imwidth"] - 2 * PRESETS["hourglass"]["crop"] == 96
