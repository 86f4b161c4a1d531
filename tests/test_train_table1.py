"""The Table 1 experiment's bookkeeping: the CSV columns, mean ± std per configuration, the markdown summary, and
the runner (parallel or not, an interrupted table continues)."""

import statistics

import pytest

from dve_kernels.train.config import PRESETS
from dve_kernels.train.table1 import COLUMNS, CONFIGURATIONS, _markdown, run_table, summarise


def _rows():
    rows = []
    for dim, dve in CONFIGURATIONS:
        for seed in range(3):
            rows.append(dict(embedding_dim=dim, dve=int(dve), seed=seed, same_identity_error=dim / 10 + seed,
                             different_identity_error=(4.0 if dve else 8.0) + seed * 0.5,
                             landmark_error_iod=20.0 + dim + seed))
    return rows


def test_columns_and_configurations_are_the_papers():
    assert COLUMNS == ("embedding_dim", "dve", "seed", "same_identity_error", "different_identity_error",
                       "landmark_error_iod")
    assert CONFIGURATIONS == ((3, False), (16, False), (16, True), (64, False), (64, True))


def test_summary_is_mean_and_sample_std_over_seeds():
    table = summarise(_rows())
    assert list(table) == list(CONFIGURATIONS)
    mean, std, runs = table[64, True]["different_identity_error"]
    assert runs == 3
    assert mean == statistics.mean([4.0, 4.5, 5.0]) and abs(std - statistics.stdev([4.0, 4.5, 5.0])) < 1e-12
    mean, std, _ = table[16, False]["same_identity_error"]
    assert abs(mean - 2.6) < 1e-12 and abs(std - 1.0) < 1e-12
    text = _markdown(table, "python -m dve_kernels.train.table1", {"max_steps": 300, "seed": 1}, 600.0)
    assert "| 64 | yes | 3 | 7.40 ± 1.00 | 4.50 ± 0.50 | 85.00 ± 1.00 |" in text
    assert "different identity -47%, same identity +0%" in text  # 4.5 / 8.5 - 1 and 7.4 / 7.4 - 1
    assert "max_steps=300" in text and "seed=1" not in text
    assert "one thread per run, 1 run(s) at a time; wall time 10.0 min" in text


@pytest.mark.slow  # ten tiny training runs, five of them in two spawned processes
def test_parallel_table_equals_the_sequential_one_and_keeps_finished_runs(tmp_path):
    base = dict(PRESETS["table1"], imwidth=28, crop=4, model_width=0.25, train_count=16, test_count=8,
                batch_size=4, max_steps=3, eval_pairs=2, regression_train=8, regression_test=8, regression_steps=5,
                backend="cpu", data_seed=0)
    tables = {}
    for jobs in (1, 2):
        runs, out = tmp_path / f"runs{jobs}", tmp_path / f"out{jobs}"
        rows = run_table(dict(base, data_root=str(runs / "data")), [0], runs, out, jobs=jobs)
        assert [(r["embedding_dim"], r["dve"]) for r in rows] == [(d, int(v)) for d, v in CONFIGURATIONS]
        tables[jobs] = (out / "table1.csv").read_text()
        assert tables[jobs].splitlines()[0] == ",".join(COLUMNS) and len(tables[jobs].splitlines()) == 6
    assert tables[1] == tables[2]  # same seeds, same numbers, whichever process trained them
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs2").glob("*/metrics.json")}
    assert len(finished) == 5
    run_table(dict(base, data_root=str(tmp_path / "runs2" / "data")), [0], tmp_path / "runs2", tmp_path / "out3",
              jobs=2)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # nothing trained again
    assert (tmp_path / "out3" / "table1.csv").read_text() == tables[2]  # but the table is written where asked
