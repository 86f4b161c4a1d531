"""The static kernel report on the C = 64 specialisations (the ones the performance targets name), sm_80 and sm_90.

The whole report (every specialisation) is ``python -m bench.kernel_report``; its output is committed under
``bench/results/static/``.
"""

import pytest

from . import kernel_report


@pytest.fixture(scope="module")
def rows():
    return kernel_report.build(archs=(80, 90), name_filter="_c64")


def test_every_c64_kernel_compiles_without_spills(rows):
    assert rows, "no specialisation matched"
    errors = [row for row in rows if "error" in row]
    assert not errors, errors[:3]
    for row in rows:
        assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row
        assert row["shared"] <= row["shared_limit"], row


def test_hot_loops_spend_about_one_exp_per_pair(rows):
    """Each pass exponentiates every (u, v) pair once (the backward recomputes its probabilities once); the
    online-softmax rescale adds a little. More would mean the compiled loop does redundant MUFU work."""
    for row in rows:
        if "_fp64_" in row["name"]:  # float64 exp is a software routine on the FMA pipe (DFMA), not MUFU
            assert row["hot_loop"]["dfma_pipe"] > 0, row["name"]
            continue
        assert row["hot_loop"]["mufu_ex2"] > 0, row["name"]
        assert 0.99 <= row["mufu_per_pair"] <= 3.1, (row["name"], row["arch"], row["mufu_per_pair"])
        if row["arch"] == 90:
            assert 0 < row["modelled_pairs_per_s"] <= kernel_report.MUFU_CEILING / (row["mufu_per_pair"] - 1e-9)


def test_report_renders(rows, tmp_path):
    kernel_report.write(rows, str(tmp_path))
    text = (tmp_path / "kernel_report.md").read_text()
    assert text.count("\n| exchange_fwd_bf16_c64 |") == 2  # one row per arch
    assert "modelled H100 pairs/s" in text
