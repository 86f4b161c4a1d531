"""The Table 1 experiment's bookkeeping: the CSV columns, mean ± std per configuration, the markdown summary."""

import statistics

from dve_kernels.train.table1 import COLUMNS, CONFIGURATIONS, _markdown, summarise


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
    assert "max_steps=300" in text and "seed=1" not in text and "wall time 10.0 min" in text
