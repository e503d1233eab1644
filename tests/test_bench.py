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
