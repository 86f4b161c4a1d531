"""The resolution study (train/resolution.py): the 2x faces are the 1x faces at twice the pixels, the 1x faces are
those Table 1 was trained on, the dilated SmallNet sees twice as far, and the runner measures, resumes and skips."""

import csv
import hashlib
import json

import numpy as np
import pytest
import torch

from dve_kernels.train.config import PRESETS, TrainConfig
from dve_kernels.train.loop import Trainer
from dve_kernels.train.models import SmallNet
from dve_kernels.train.resolution import (COLUMNS, NOTES_MARKER, RUN_RECORD, main, mean_iod, receptive_field,
                                          run_config, summarise)
from dve_kernels.train.synthetic import render_face, render_faces


def test_the_2x_preset_is_the_1x_one_at_twice_the_pixels():
    one, two = TrainConfig.from_dict(PRESETS["table1"]), TrainConfig.from_dict(PRESETS["table1-2x"])
    assert (two.imwidth, two.crop, two.input_size) == (2 * one.imwidth, 2 * one.crop, 2 * one.input_size)
    assert (two.imwidth, two.crop, two.input_size) == (112, 16, 80)
    changed = {k for k, v in two.to_dict().items() if one.to_dict()[k] != v}
    assert changed == {"imwidth", "crop"}  # same faces, warps (normalised), epochs, steps, learning rate, evaluation


def test_2x_faces_are_the_same_identities_poses_and_marks():
    for index in range(4):
        small, marks_small = render_face(0, index, 56, marks=30)
        large, marks_large = render_face(0, index, 112, marks=30)
        # every random draw is independent of the size: the geometry scales exactly (about the image's corner, a
        # quarter of a 1x pixel from its centre)
        np.testing.assert_array_equal(marks_large, 2 * marks_small)
        down = large.reshape(56, 2, 56, 2, 3).astype(np.float64).mean(axis=(1, 3))
        same = np.abs(down - small).mean()
        other = np.abs(render_face(0, index + 1, 56, marks=30)[0].astype(np.float64) - small).mean()
        assert same < 4.0 and same < other / 10  # out of 255: edges differ by rasterisation only


def test_the_1x_faces_are_bitwise_those_table1_was_trained_on():
    images, landmarks = render_faces(0, 3, 56, marks=30)
    assert hashlib.sha256(images.tobytes()).hexdigest() == \
        "6540d5cb8e91977f6d50b8909b41ba7ddb918d7983ca8e8698e7977ea4b7e78a"
    assert hashlib.sha256(landmarks.tobytes()).hexdigest() == \
        "e4ae5f66783ea7a4f4f1395723d42288de015ee41579e8939a5ab33d07e578c4"


def test_doubled_dilations_double_the_receptive_field_at_the_same_weights():
    one = receptive_field(run_config("1x", "smallnet", 0))
    two = receptive_field(run_config("2x", "smallnet-d2", 0))
    assert (one, two) == (54, 106)  # the analytic fields: 5 + 1 + 4·2 + 8·2 + 8·2 + 4·2, and twice it less 2
    plain, dilated = SmallNet(64), SmallNet(64, dilation=2)
    assert [p.shape for p in plain.parameters()] == [p.shape for p in dilated.parameters()]
    x = torch.randn(1, 3, 40, 40)
    assert dilated.eval()(x).shape == plain.eval()(x).shape == (1, 64, 20, 20)
    torch.manual_seed(0)
    reference = SmallNet(64)
    torch.manual_seed(0)
    rebuilt = SmallNet(64, dilation=1)  # the default network is unchanged, initialisation included
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), rebuilt.state_dict().values()))


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [dict(resolution="2x", model="smallnet", variant="-", seed=s, input_px=80, map_px=40,
                 receptive_field_px=54, dense_step_gib=1.0, fused_step_gib=0.1, steps=10, landmark_error_iod=10 + s,
                 same_identity_error_rel=0.1, different_identity_error_rel=0.2 * (s + 1), same_identity_error_px=8,
                 different_identity_error_px=16, peak_rss_gib=1.0, peak_rss_eval_gib=1.5, minutes=s, s_per_step=1)
            for s in range(3)]
    stats = summarise(rows)["2x", "smallnet", "-"]
    assert stats["landmark_error_iod"] == (11.0, 1.0, 3)
    assert stats["different_identity_error_rel"][0] == pytest.approx(0.4)
    assert stats["different_identity_error_rel"][1] == pytest.approx(0.2)
    assert stats["receptive_field_px"] == 54 and stats["minutes"][0] == 1.0


TINY = dict(imwidth=28, crop=4, model_width=0.25, train_count=16, test_count=8, batch_size=4, eval_pairs=2,
            regression_train=8, regression_test=8, regression_steps=5, backend="cpu")


def test_runner_measures_resumes_and_keeps_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "table1", dict(PRESETS["table1"], **TINY))
    monkeypatch.setitem(PRESETS, "table1-2x", dict(PRESETS["table1"], imwidth=56, crop=8))
    runs, out = tmp_path / "runs", tmp_path / "out"
    # an interrupted run: one step of two done, its checkpoint left behind
    values = run_config("2x", "smallnet-d2", 0, steps=1, data_root=str(runs / "data"))
    Trainer(TrainConfig.from_dict(values), runs / "2x-smallnet-d2-seed0", progress=False).run()
    argv = ["--settings", "1x:smallnet", "2x:smallnet-d2:0", "--seeds", "0", "--steps", "2", "--jobs", "2",
            "--ablation", "short", "--ablation-settings", "1x:smallnet", "--runs", str(runs), "--out", str(out)]
    assert main(argv) == 0
    with open(out / "resolution.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["resolution"], r["model"], r["variant"], r["seed"], r["steps"]) for r in rows] == \
        [("1x", "smallnet", "-", "0", "2"), ("2x", "smallnet-d2", "-", "0", "2"), ("1x", "smallnet", "short", "0", "1")]
    one, two, _ = rows
    assert (one["input_px"], one["map_px"], two["input_px"], two["map_px"]) == ("20", "10", "40", "20")
    assert (one["resumed"], two["resumed"]) == ("0", "1")
    for row in rows:  # measured in the run's own process, relative errors = pixels / input width
        assert 0.1 < float(row["peak_rss_gib"]) <= float(row["peak_rss_eval_gib"]) < 8
        assert float(row["dense_step_gib"]) > 0 and float(row["minutes"]) > 0
        assert float(row["same_identity_error_rel"]) == pytest.approx(
            float(row["same_identity_error_px"]) / float(row["input_px"]), rel=1e-5)
    assert float(two["dense_step_gib"]) > float(one["dense_step_gib"])
    text = (out / "resolution.md").read_text()
    iods = {r: mean_iod(r, runs) for r in ("1x", "2x")}
    assert iods["2x"] == pytest.approx(2 * iods["1x"], rel=1e-6)  # the same faces
    assert f"| 1x smallnet | 10² | 54 ({54 / iods['1x']:.1f}) | 1 |" in text
    assert f"| 2x smallnet-d2 | 20² | 106 ({106 / iods['2x']:.1f}) | 1 |" in text
    assert "## Ablation" in text and "| 1x smallnet (short) | 10² | 54 (" in text
    assert (out / "resolution.png").stat().st_size > 10_000 and (out / "resolution_ablation.png").is_file()
    # notes written below the marker survive; finished runs are not trained again
    (out / "resolution.md").write_text(text + "A finding.\n")
    records = {p: p.stat().st_mtime_ns for p in runs.glob(f"*/{RUN_RECORD}")}
    assert len(records) == 3 and json.loads((runs / "2x-smallnet-d2-seed0" / RUN_RECORD).read_text())["resumed"]
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in records} == records
    assert (out / "resolution.md").read_text().endswith(NOTES_MARKER + "\nA finding.\n")


def test_a_checkpoint_written_before_model_dilation_existed_resumes(tmp_path):
    values = dict(PRESETS["table1"], **TINY, max_steps=1, data_root=str(tmp_path / "data"))
    Trainer(TrainConfig.from_dict(values), tmp_path / "run", progress=False).run()
    path = tmp_path / "run" / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["config"]["model_dilation"]
    torch.save(checkpoint, path)
    trainer = Trainer(TrainConfig.from_dict(dict(values, max_steps=2)), tmp_path / "run", resume="auto",
                      progress=False)
    assert trainer.run()["global_step"] == 2


def test_faces_with_half_the_detail_are_the_same_faces_resized_up(tmp_path):
    from dve_kernels.train.data import SyntheticFaces

    full = SyntheticFaces(None, "test", 112, count=3, marks=30)
    half = SyntheticFaces(tmp_path, "test", 112, count=3, marks=30, detail=0.5)
    small = SyntheticFaces(None, "test", 56, count=3, marks=30)
    assert half.images.shape == full.images.shape == (3, 112, 112, 3)
    # the 56-px faces resized to 112: landmarks where the resize puts them, half a pixel from the native ones
    np.testing.assert_allclose(half.keypoints, 2 * small.keypoints + 0.5, atol=1e-5)
    np.testing.assert_allclose(half.keypoints, full.keypoints + 0.5, atol=1e-4)
    blur = np.abs(half.images.astype(np.float64) - full.images).mean()
    assert 1.0 < blur < 10.0  # the same faces, without their finest detail
    assert (tmp_path / "synthetic-test-0-3-112-m30-r56.npz").is_file()
    cached = SyntheticFaces(tmp_path, "test", 112, count=3, marks=30, detail=0.5)
    assert np.array_equal(cached.images, half.images)
