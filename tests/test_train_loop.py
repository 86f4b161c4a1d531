"""The training loop: loss goes down, exact resume after a real SIGKILL, DDP, and run directories that survive
their users (used --out, changed settings on --resume, bad checkpoints, bad folders). The C++ backend (cpu)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dve_kernels.train.__main__ import main
from dve_kernels.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, load_run
from dve_kernels.train.config import PRESETS, TrainConfig, build_parser, config_from_args
from dve_kernels.train.data import build_dataset
from dve_kernels.train.evaluate import matching_errors
from dve_kernels.train.loop import METRICS_LOG, train

REPO = Path(__file__).resolve().parents[1]

# A tiny SmallNet on tiny synthetic faces: 28px images cropped to 20px, 10x10 embeddings.
TINY = ["--imwidth", "28", "--crop", "4", "--model-width", "0.25", "-C", "8", "--train-count", "32",
        "--test-count", "16", "--batch-size", "8", "--backend", "cpu", "--seed", "3"]


def _run(args, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / METRICS_LOG).read_text().splitlines()]


def _tiny_config(**overrides):
    config = config_from_args(build_parser().parse_args(["--preset", "demo", *TINY]))
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.mark.slow  # subprocesses or a full train-evaluate-draw cycle: the second tier
def test_short_training_run_decreases_the_loss_and_evaluates(tmp_path):
    config = _tiny_config(epochs=6, lr=3e-3, lr_milestones=[], eval_pairs=6, regression_train=16,
                          regression_test=16, regression_steps=30)
    summary = train(config, tmp_path, progress=False)
    losses = _losses(tmp_path)
    assert len(losses) == 24 and summary["global_step"] == 24
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < first - 0.15, (first, last)
    # The reported matching errors are those of the saved model, recomputed independently from the checkpoint.
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    saved_config, model, _ = load_run(tmp_path)
    assert saved_config == config
    test_set = build_dataset("synthetic", tmp_path / "data", "test", config.imwidth, count=config.test_count,
                             seed=config.seed, marks=config.face_marks)
    same, diff, _ = matching_errors(model, test_set, 6, config.crop, seed=config.seed)
    assert metrics["same_identity_error"] == pytest.approx(same, rel=1e-6)
    assert metrics["different_identity_error"] == pytest.approx(diff, rel=1e-6)
    assert 0 < same < 20 * 2 ** 0.5 and 0 < diff < 20 * 2 ** 0.5  # inside the 20x20 input
    assert 0 < metrics["landmark_error_iod"] < 1000
    assert metrics["matching"]["pairs"] == 6
    for name in ("matches.png", "loss_curve.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # atomic writes leave nothing behind


def test_checkpoint_is_weights_only_complete_and_bad_ones_are_named(tmp_path):
    config = _tiny_config(epochs=1, max_steps=2)
    train(config, tmp_path, evaluate=False, progress=False)
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0 and ckpt["batch_index"] == 2
    assert set(ckpt) == {"format", "config", "model", "optimizer", "scheduler", "scaler", "epoch", "batch_index",
                         "global_step", "world_size"}  # no RNG state: every random draw is seeded by the step
    assert TrainConfig.from_dict(ckpt["config"]) == config
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    cases = {
        "empty.pt": (b"", "is empty"),
        "truncated.pt": (good[:len(good) // 2], "truncated or not a PyTorch file"),
        "text.pt": (b"not a checkpoint\n", "truncated or not a PyTorch file"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}.*{message}"):
            load_checkpoint(tmp_path / name)
    torch.save({"bad": PRESETS.__class__}, tmp_path / "evil.pt")  # a pickled class: refused, never unpickled
    with pytest.raises(CheckpointError, match="evil.pt holds objects other than tensors"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt is not a dve_kernels.train checkpoint: it has no format"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="missing.pt does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.slow  # subprocesses or a full train-evaluate-draw cycle: the second tier
def test_resume_after_sigkill_is_bitwise_equal(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ["-m", "dve_kernels.train", "--preset", "demo", *TINY, "--epochs", "50", "--checkpoint-every", "2",
            "--no-eval"]
    done = _run([*args, "--max-steps", "12", "--out", str(whole)])
    assert done.returncode == 0, done.stderr[-2000:]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    process = subprocess.Popen([sys.executable, *args, "--out", str(killed)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / METRICS_LOG
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 5):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # a real kill, in the middle of training
    assert process.wait(timeout=30) == -signal.SIGKILL
    partial = load_checkpoint(killed / CHECKPOINT_NAME)
    assert 4 <= partial["global_step"] < 12, partial["global_step"]
    assert len(_losses(killed)) >= partial["global_step"]
    resumed = _run([*args, "--max-steps", "12", "--out", str(killed), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"step {partial['global_step']}" in resumed.stderr
    a, b = load_checkpoint(whole / CHECKPOINT_NAME), load_checkpoint(killed / CHECKPOINT_NAME)
    assert a["global_step"] == b["global_step"] == 12
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for field in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert torch.equal(state[field], b["optimizer"]["state"][key][field])
    assert a["scheduler"] == b["scheduler"]
    assert _losses(whole) == _losses(killed)  # the re-run steps replaced the logged ones: steps 1..12 once
    assert any(not torch.equal(t, partial["model"][n]) for n, t in a["model"].items())


def test_used_out_changed_settings_and_bad_folders_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--preset", "demo", *TINY, "--epochs", "1", "--max-steps", "2", "--no-eval", "--out", str(out)]
    assert main(base) == 0
    log = (out / METRICS_LOG).read_text()
    # `make job` twice into the same --out: the second refuses, the log is untouched.
    assert main(base) == 2
    assert "already holds a run (checkpoint.pt, metrics.jsonl): continue it with --resume" in capsys.readouterr().err
    assert (out / METRICS_LOG).read_text() == log
    # --resume with settings that change the experiment: refused, naming each.
    assert main([*base, "--resume", "--lr", "0.01", "--seed", "4", "--pow", "1"]) == 2
    err = capsys.readouterr().err
    assert "would change lr (0.001 -> 0.01), pow (0.5 -> 1.0), seed (3 -> 4)" in err, err
    # Settings that do not alter the experiment may change; a killed write's temporary file is removed.
    (out / ".checkpoint.pt.tmp999").write_bytes(b"partial")
    assert main([*base, "--resume", "--max-steps", "3", "--eval-pairs", "7"]) == 0
    assert load_checkpoint(out / CHECKPOINT_NAME)["global_step"] == 3
    assert not list(out.glob(".*tmp*"))
    # Nothing to resume, --out a file, a data folder that does not exist: clear messages, nothing written.
    empty = tmp_path / "empty"
    assert main(["--preset", "demo", *TINY, "--out", str(empty), "--resume"]) == 2
    assert f"nothing to resume in {empty}: it has no checkpoint.pt" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main([*base[:-1], str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main([*base[:-1], str(tmp_path / "file" / "below")]) == 2
    assert "is not writable" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert main([*base[:-1], str(fresh), "--dataset", "celeba", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "--data-root" in capsys.readouterr().err and not list(fresh.iterdir())
    (tmp_path / "bad.pt").write_bytes(b"")
    assert main([*base, "--resume", str(tmp_path / "bad.pt")]) == 2
    assert "bad.pt is empty" in capsys.readouterr().err


@pytest.mark.slow  # subprocesses or a full train-evaluate-draw cycle: the second tier
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
    single = _run(["-m", "dve_kernels.train", "--out", str(out), "--resume", "--max-steps", "10"])
    assert single.returncode == 2 and "written by 2 processes" in single.stderr, single.stderr[-2000:]


def test_cli_help_covers_every_field_and_shows_the_presets(tmp_path):
    text = build_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
    parser = build_parser()
    assert all(action.help for action in parser._actions), [a.dest for a in parser._actions if not a.help]
    assert "highres: model=hourglass, embedding_dim=64, imwidth=288" in " ".join(text.split())
    assert config_from_args(parser.parse_args(["--preset", "smallnet", "--dve", "off"])).dve is False
    bad = _run(["-m", "dve_kernels.train", "--imwidth", "21", "--crop", "5", "--out", str(tmp_path)])
    assert bad.returncode == 2 and "must be even" in bad.stderr
    assert PRESETS["highres"]["imwidth"] - 2 * PRESETS["highres"]["crop"] == 256  # 128x128 embeddings
    assert PRESETS["smallnet"]["imwidth"] - 2 * PRESETS["smallnet"]["crop"] == 70
    assert PRESETS["hourglass"]["imwidth"] - 2 * PRESETS["hourglass"]["crop"] == 96
