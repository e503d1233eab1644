"""`symnet bench` end to end on the smallest workload with the peers that need no extra."""

import json

import pytest

from symnet.cli import main


def test_bench_refuses_an_unknown_peer(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--workload", "tiny", "--peers", "symnet,tensorflow"])
    assert "unknown workload or peer ['tensorflow']" in capsys.readouterr().err


def test_bench_writes_table_and_json(tmp_path):
    assert main(["bench", "--workload", "tiny", "--peers", "symnet,numpy",
                 "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    by_peer = {r["peer"]: r for r in results}
    assert set(by_peer) == {"symnet", "numpy"}
    for r in by_peer.values():  # the same maths from the same start: the same final loss
        assert r["metric"] == pytest.approx(0.0816, abs=1e-3)
        assert len(r["rounds_s"]) == 4 and r["metric_name"] == "final loss"
    assert "cached_setup_s" in by_peer["symnet"]
    assert "| numpy |" in (tmp_path / "results.md").read_text()


def test_repeated_runs_pool_their_steady_epochs():
    from benchmarks.run import pool

    runs = [{"workload": "tiny", "peer": "numpy", "setup_s": s, "first_epoch_s": f,
             "rounds_s": rounds, "epoch_s": sorted(rounds[1:])[1], "peak_mb": m}
            for s, f, rounds, m in [(1.0, 9.0, [9.0, 1.0, 5.0, 6.0], 10),
                                    (3.0, 7.0, [7.0, 2.0, 3.0, 4.0], 30)]]
    pooled = pool(runs)
    assert pooled["epoch_s"] == 3.5  # the median of 1, 5, 6, 2, 3, 4; not of the runs' medians
    assert pooled["epoch_s_per_run"] == [5.0, 3.0]
    assert pooled["rounds_s"] == [9.0, 1.0, 5.0, 6.0] and len(pooled["all_rounds_s"]) == 8
    assert (pooled["setup_s"], pooled["first_epoch_s"], pooled["peak_mb"]) == (2.0, 8.0, 30)
    assert pool([{"peer": "jax", "missing": "not installed"}] * 2) == {"peer": "jax",
                                                                      "missing": "not installed"}


def test_summary_bolds_the_fastest_and_divides_by_the_fastest_other_peer():
    from benchmarks.run import setup_summary, summary

    results = [{"workload": "wide", "peer": "symnet", "epoch_s": 3.0, "setup_s": 2.0,
                "cached_setup_s": 0.5},
               {"workload": "wide", "peer": "jax-scan", "epoch_s": 2.5, "setup_s": 1.0},
               {"workload": "wide", "peer": "pytensor-numba", "epoch_s": 4.0, "setup_s": 9.0},
               {"workload": "wide", "peer": "sklearn", "missing": "not installed"}]
    row = summary(results).splitlines()[2]
    assert row == "| wide | 3 | **2.5** | 4 | n/a | **1.20** (jax-scan; target ≤ 1.0) |"
    row = setup_summary(results, peers=("symnet", "jax-scan", "pytensor-numba")).splitlines()[2]
    assert row == "| wide | 2.00 / 0.50 | 1.00 | 9.00 | 4.5 × |"


def test_sweep_keeps_the_best_sgemm_rate_of_its_passes(tmp_path, monkeypatch):
    from benchmarks import sweep

    points = len(sweep.BATCHES + sweep.WIDTHS)
    rates = iter([1e9] * points + [4e9] * points)  # a slow spell in the first pass
    passes = iter(range(10**6))
    monkeypatch.setattr(sweep, "gemm_rate", lambda batch, width: next(rates))
    monkeypatch.setattr(sweep, "run_child", lambda peer, batch, width: [float(next(passes))])
    monkeypatch.setattr(sweep, "plot", lambda rows, peers, path: None)
    assert sweep.main(["--peers", "symnet", "--repeat", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())
    first = rows[0]
    flops = sweep.flops_per_epoch(sweep.workload(first["batch"], first["width"]), sweep.ROWS)
    assert first["roofline_s"] == pytest.approx(flops / 4e9)  # the best of 1e9 and 4e9
    assert first["symnet"] == pytest.approx((0 + points) / 2)  # the median of its two passes
