"""`symnet bench` end to end on the smallest workload with the peers that need no extra."""

import importlib.util
import json

import numpy as np
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


def test_summary_bolds_the_fastest_and_divides_by_the_fastest_other_peer(monkeypatch):
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
    head = setup_summary(results[:2]).splitlines()[0]  # the peers the run measured, no n/a
    assert head == "| workload | symnet | jax-scan | pytensor-numba ÷ symnet |"
    from benchmarks import run

    monkeypatch.setattr(run, "table", lambda results: "")  # the per-peer tables need more fields
    loaded = [dict(r, workload="adam-relu") for r in results]  # under load the target is 1.0
    assert "(jax-scan; target ≤ 1.0) |" in run.markdown({"load": "a busy process"}, loaded)
    assert "(jax-scan; target ≤ 0.9) |" in run.markdown({}, loaded)


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


def test_a_round_of_symnet_shuffles_as_every_other_peer_does():
    """fit(seed=1 + r) draws round r's permutations from workloads.round_rng, as the peers'
    loops do: the same maths from the same start gives the same parameters."""
    import dataclasses

    import numpy as np

    from benchmarks.peers import numpy_peer, symnet_peer
    from benchmarks.workloads import WORKLOADS, initial_params

    w = dataclasses.replace(WORKLOADS["seed002"], sizes=(4, 3, 2), batch=5, epochs=2)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(23, 4)), rng.uniform(size=(23, 2))
    params0 = {k: v.astype(np.float64) for k, v in initial_params(w).items()}
    model = symnet_peer.build(w, dtype="float64", backend="numpy")
    for k, v in params0.items():
        model.params[k][...] = v
    for r in range(w.epochs):
        symnet_peer.fit_round(model, w, X, Y, r)
    theirs = numpy_peer.train(w, (X, Y), params0)["params"]
    for k in params0:
        np.testing.assert_allclose(model.params[k], theirs[k], rtol=1e-10, atol=1e-12)


def test_the_busy_neighbour_runs_only_inside_its_block():
    from benchmarks.busy import busy_neighbour

    with busy_neighbour(False) as none:
        assert none is None
    with pytest.raises(KeyError), busy_neighbour() as proc:
        assert proc.poll() is None  # running
        raise KeyError("an error inside the run")
    assert proc.poll() is not None  # killed on the way out


def test_results_md_says_the_run_was_under_load():
    from benchmarks.run import markdown

    results = [{"workload": "tiny", "peer": "numpy", "missing": "not installed"}]
    assert "Under load: one CPU-bound" in markdown({"load": "one CPU-bound process"}, results)
    assert "Under load" not in markdown({"load": None}, results)


def test_layers_names_runs_of_equal_widths():
    from benchmarks.workloads import layers

    assert layers((784, 32, 32, 10)) == "784-32-32-10"
    assert layers((784, *[64] * 8, 10)) == "784-64×8-10"


def test_parameters_compared_bit_for_bit():
    import numpy as np

    from benchmarks.threads import differences, parity

    a = {"W1": np.array([[1.0, 2.0]], np.float32), "b1": np.zeros((1, 2), np.float32)}
    same = {k: v.copy() for k, v in a.items()}
    off = {**same, "W1": np.nextafter(a["W1"], np.float32(3))}  # one ulp
    assert differences(a, same) == [] and differences(a, off) == ["W1"]
    assert differences(a, {"W1": a["W1"]}) == ["b1"]
    assert parity({"threads 1 pass 1": a}) == {"identical": None, "compared": 1, "mismatches": []}
    assert parity({"threads 1 pass 1": a, "threads 2 pass 1": same})["identical"] is True
    check = parity({"threads 1 pass 1": a, "threads 2 pass 1": same, "threads 4 pass 1": off})
    assert check["identical"] is False and check["compared"] == 3
    assert check["mismatches"] == ["threads 4 pass 1 differs from threads 1 pass 1: W1 "
                                   "(max |Δ| 2.38e-07)"]  # the ulp of 2


def test_threads_table_has_a_column_per_count_and_names_a_mismatch():
    from benchmarks.threads import markdown, summarise

    rows = [summarise("seed002", 1, [{"round_s": [9.0, 1.0, 3.0]}, {"round_s": [9.0, 2.0, 4.0]}]),
            summarise("seed002", 2, [{"error": "boom"}])]
    checks = {"seed002": {"identical": False, "compared": 2, "mismatches": ["pass 2 differs"]}}
    text = markdown(rows, checks, [1, 2], "SYMNET_NUM_THREADS", load=False)
    lines = text.splitlines()
    assert lines[2] == "| shape | batch | 1 thread | 2 threads | parameters after 2 rounds |"
    assert lines[4] == ("| seed002 (784-32-32-10) | 100 | 2.5 (1–4) | error: boom "
                        "| **DIFFER** in 1 of 2 runs |")
    assert lines[-1] == "- pass 2 differs" and "Under load" not in text


def test_depth_table_reports_a_failed_child_in_its_cells():
    from benchmarks.depth import markdown

    rows = [{"depth": 8, "backend": "numba", "error": "ctypes.ArgumentError: too many"},
            {"depth": 8, "backend": "numpy", "setup_s": 0.5, "round_s": [3, 2, 4],
             "epoch_s": 3.0, "min_s": 2.0, "max_s": 4.0}]
    assert markdown(rows, ["numba", "numpy"]).splitlines()[-1] == (
        "| 8 | error: ctypes.ArgumentError: too many |  | 0.50 | 3 (2–4) |")


def test_concurrent_table_divides_together_by_one_after_the_other():
    from benchmarks.concurrent import markdown

    passes = [{"sequential_s": 2.0, "sequential_each_s": [1.0, 1.0], "together_s": 2.2,
               "together_each_s": [2.1, 2.2], "ratio": 1.1},
              {"sequential_s": 4.0, "sequential_each_s": [2.0, 2.0], "together_s": 4.0,
               "together_each_s": [3.9, 4.0], "ratio": 1.0}]
    lines = markdown(["seed002", "seed002"], 20, passes).splitlines()
    assert lines[4] == "| 1 | 2.000 (1.000, 1.000) | 2.200 (2.100, 2.200) | 1.10 |"
    assert lines[-1] == "| median | 3.000 | 3.100 | **1.05** |"


def test_symnet_bench_passes_load_on(monkeypatch):
    from benchmarks import run

    seen = []
    monkeypatch.setattr(run, "main", lambda argv, prog: seen.append((argv, prog)) or 0)
    assert main(["bench", "--workload", "tiny", "--load"]) == 0
    assert main(["bench", "--workload", "tiny"]) == 0
    assert seen == [(["--workload", "tiny", "--load"], "symnet bench"),
                    (["--workload", "tiny"], "symnet bench")]


def test_symnet_bench_checks_its_options_and_keeps_the_committed_results(capsys, monkeypatch,
                                                                          tmp_path):
    """Its help and errors are benchmarks.run's under its own name; --repeat must be positive;
    and by default it writes to ./symnet-bench, never over benchmarks/results."""
    from benchmarks import run

    for argv, message in ((["--repeat", "0"], "--repeat: '0' is not a positive integer"),
                          (["--workload", "nope"], "unknown workload or peer ['nope']")):
        with pytest.raises(SystemExit) as stop:
            main(["bench", *argv])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "symnet bench: error:" in err and message in err, err
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "usage: symnet bench" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run, "measure", lambda workload, peer, missing, first: {
        "workload": workload, "peer": peer, "missing": "not installed here"})
    monkeypatch.setattr(run, "pool", lambda runs: runs[0])
    monkeypatch.setattr(run, "table", lambda results: "")
    monkeypatch.setattr(run, "markdown", lambda machine, results: "the table")
    assert main(["bench", "--workload", "tiny", "--peers", "numpy"]) == 0
    assert (tmp_path / "symnet-bench" / "results.md").read_text() == "the table"


def test_the_blocks_workload_agrees_with_torch_and_jax_and_the_plain_peers_decline_it():
    """bn-dropout: the float64 gradients of batch norm (dropout off: the masks differ) agree
    with torch's and JAX's; the biases before a norm, whose gradient is rounding noise, do not
    count against it. The NumPy metric reads the running statistics."""
    from benchmarks.run import grad_agreement, metric
    from benchmarks.workloads import WORKLOADS, initial_params

    w = WORKLOADS["bn-dropout"]
    rng = np.random.default_rng(0)
    data = (rng.uniform(0, 1, (40, 784)), np.eye(10)[rng.integers(0, 10, 40)])
    params = initial_params(w)
    peers = ["torch_peer"] + (["jax_common"] if importlib.util.find_spec("jax") else [])
    for name in peers:
        peer = importlib.import_module(f"benchmarks.peers.{name}")
        assert grad_agreement(w, peer, data, params) < 1e-8, name
    for name in ("hand_numba", "numpy_peer", "sklearn_peer"):
        peer = importlib.import_module(f"benchmarks.peers.{name}")
        assert "not applicable" in peer.applicable(w), name
    running = {f"running_{s}{k}": np.full((1, w.sizes[k]), v) for k in (1, 2)
               for s, v in (("mean", 0.0), ("var", 1.0))}
    assert 0 <= metric(w, params, *data, running) <= 1


@pytest.mark.parametrize("command", [["bench", "--workload", "tiny"], ["demo"]])
def test_ctrl_c_ends_a_command_with_a_line_not_a_traceback(monkeypatch, capsys, command):
    from benchmarks import run
    from symnet import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "main", interrupted)
    monkeypatch.setattr(cli, "demo", interrupted)
    assert main(command) == 130
    assert capsys.readouterr().err == f"\nsymnet {command[0]}: interrupted\n"
