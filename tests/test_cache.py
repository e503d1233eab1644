"""The kernel cache: what it loads is checked, what is damaged is compiled again, an unwritable
location costs a warning and no kernel, and no name or formula in a model becomes code."""

import ast
import errno
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numba.core.caching
import numpy as np
import pytest
import sympy as sp

import symnet as sn
from codegen.ir import UPDATE_SYMBOLS, Buffer, CodegenError, Instr, Op, Program, Update, arg_symbols
from codegen.numba import cache, emit


def build(backend="numba"):
    X, Y = sn.Input("X", 5), sn.Input("Y", 2)
    out = sn.dense(sn.dense(X, 7, sn.tanh), 2)
    return sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, dtype="float64",
                      seed=0, backend=backend, optimizer=sn.optim.Adam(lr=0.01))


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(9, 5)), rng.normal(size=(9, 2))


def trained(model):
    model.fit(*data(), epochs=2, batch_size=4, shuffle=False, verbose=False)
    return model.params


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A kernel cache of this test's own; the modules it imports are forgotten afterwards, so
    that the next compile reads the files again, as a new process would."""
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path / "kernels"))
    before = set(sys.modules)
    yield tmp_path / "kernels"
    for name in set(sys.modules) - before:
        if name.startswith("symnet_"):
            del sys.modules[name]


def forget(model):
    """Drop the model's module from this process, as if the next compile were in a new one."""
    del sys.modules[model._runner().module.__name__]


def test_a_damaged_module_file_is_written_again(own_cache):
    first = build()
    want = trained(first)
    path = Path(first._runner().module.__file__)
    path.write_text(path.read_text()[:200])  # truncated: a SyntaxError if imported
    forget(first)
    again = build()
    assert path.read_text() == again.source
    for k, v in trained(again).items():
        np.testing.assert_array_equal(v, want[k])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
@pytest.mark.parametrize("kind", ["nbi", "nbc"])
def test_damaged_machine_code_is_compiled_again(own_cache, kind, damage):
    first = build()
    want = trained(first)
    files = sorted((own_cache / "__pycache__").glob(f"*.{kind}"))
    assert files  # numba kept the machine code beside the module
    for f in files:
        content = f.read_bytes()
        f.write_bytes({"garbage": b"\x80\x04not a pickle" * 10, "truncated": content[:40],
                       "empty": b""}[damage])
    forget(first)
    again = build()
    for k, v in trained(again).items():
        np.testing.assert_array_equal(v, want[k])
    forget(again)  # and the repaired cache loads in the next "process"
    third = build()
    for k, v in trained(third).items():
        np.testing.assert_array_equal(v, want[k])
    assert third._runner().cached("train_epochs")


@pytest.mark.parametrize("where", ["a file", "under a file", "a broken link"])
def test_an_unwritable_cache_location_compiles_elsewhere_with_one_warning(own_cache, tmp_path,
                                                                         monkeypatch, where):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    location, why = blocker, f"{blocker} is a file, not a directory"
    if where == "under a file":
        location = blocker / "kernels"
    elif where == "a broken link":
        location = tmp_path / "link"
        location.symlink_to(tmp_path / "gone")
        why = f"{location} is a link to {tmp_path / 'gone'}, which does not exist"
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(location))
    monkeypatch.setattr(cache, "_fallback", [])
    at_exit = []
    monkeypatch.setattr(cache.atexit, "register", lambda f, *a, **k: at_exit.append((f, a, k)))
    with pytest.warns(cache.CacheWarning, match=f"cannot be written {re.escape(f'({why})')}") \
            as seen:
        model = build()
    assert seen[0].filename == __file__  # build's sn.compile, not a line of symnet or codegen
    assert trained(model)
    where = Path(model._runner().module.__file__)
    assert where.parent == cache._fallback[0] and where.parent.exists()
    with warnings_as_errors():  # the second model: no second warning
        other = build()
        other.predict(data()[0])
    for f, args, kwargs in at_exit:  # what the end of the process runs: "not kept"
        f(*args, **kwargs)
    assert not where.parent.exists()


def test_a_cache_that_cannot_be_written_lends_the_kernels_it_holds(own_cache, tmp_path,
                                                                   monkeypatch):
    """A read-only cache (a container's image, a shared installation): the kernels it holds are
    copied out and loaded, not compiled again (seconds each), and nothing in it changes."""
    monkeypatch.setenv("SYMNET_NUM_THREADS", "1")  # every kernel compiled here, no helper
    first = build()
    first.compile_kernels()
    want = trained(first)
    forget(first)
    before = {p: p.stat().st_mtime_ns for p in own_cache.rglob("*")}
    monkeypatch.setattr(cache, "_usable", {})
    monkeypatch.setattr(cache, "_problem", lambda directory: "Read-only file system")
    monkeypatch.setattr(cache, "_fallback", [])
    monkeypatch.setattr(cache.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(cache.atexit, "register", lambda *a, **k: None)
    with pytest.warns(cache.CacheWarning, match=r"\(Read-only file system\); kernels it holds are "
                                                r"loaded from it, others are compiled in"):
        again = build()
    assert Path(again._runner().module.__file__).parent == tmp_path / "elsewhere"
    again.compile_kernels()
    assert again.kernels_cached
    assert all(again._runner().cached(k) for k in ("train_epochs", "loss", "forward"))
    for k, v in trained(again).items():
        np.testing.assert_array_equal(v, want[k])
    assert {p: p.stat().st_mtime_ns for p in own_cache.rglob("*")} == before



@pytest.mark.parametrize("clear", ["removed", "emptied"])
def test_a_cache_cleared_while_a_model_is_in_use_is_written_again(own_cache, monkeypatch, clear):
    """The user clears the cache (or a cleaner does) between fit and predict: the kernels not yet
    compiled are compiled into the cache written again, not refused by numba (its cache needs the
    module's file), and so are a new model's."""
    monkeypatch.setenv("SYMNET_NUM_THREADS", "1")  # fit compiles train_epochs only, here
    model = build()
    X, Y = data()
    model.fit(X, Y, epochs=2, batch_size=4, shuffle=False, verbose=False)
    shutil.rmtree(own_cache)
    if clear == "emptied":
        own_cache.mkdir()
    reference = build(backend="numpy")
    reference.fit(X, Y, epochs=2, batch_size=4, shuffle=False, verbose=False)
    np.testing.assert_allclose(model.predict(X), reference.predict(X), rtol=1e-10)
    assert model.evaluate(X, Y)["loss"] == pytest.approx(reference.evaluate(X, Y)["loss"],
                                                          rel=1e-10)
    assert Path(model._runner().module.__file__).read_text() == model.source
    assert any(own_cache.glob("__pycache__/*.forward-*.nbi"))  # kept for the next process
    shutil.rmtree(own_cache)
    forget(model)  # a new model of the same declaration, in this process or the next
    want = trained(build(backend="numpy"))
    for k, v in trained(build()).items():
        np.testing.assert_allclose(v, want[k], rtol=1e-10)

def test_a_cache_cleared_and_then_unwritable_warns_once_and_compiles_in_memory(own_cache,
                                                                                monkeypatch):
    monkeypatch.setenv("SYMNET_NUM_THREADS", "1")  # fit compiles train_epochs only, here
    model = build()
    X, Y = data()
    model.fit(X, Y, epochs=2, batch_size=4, shuffle=False, verbose=False)
    shutil.rmtree(own_cache)

    def read_only(path, source):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache, "_write", read_only)
    reference = build(backend="numpy")
    reference.fit(X, Y, epochs=2, batch_size=4, shuffle=False, verbose=False)
    with pytest.warns(cache.CacheWarning, match=r"\(Read-only file system\); it is compiled in "
                                                r"memory") as seen:
        np.testing.assert_allclose(model.predict(X), reference.predict(X), rtol=1e-10)
        model.evaluate(X, Y)
        model.loss_and_grad(X, Y)
    assert len([w for w in seen if w.category is cache.CacheWarning]) == 1

def test_a_full_disk_compiles_in_memory_and_leaves_no_temporary_file(own_cache, monkeypatch):
    write = os.fdopen

    def full(fd, *args, **kwargs):
        f = write(fd, *args, **kwargs)

        def fail(text):
            raise OSError(errno.ENOSPC, "No space left on device")

        f.write = fail
        return f

    monkeypatch.setattr(cache.os, "fdopen", full)
    with pytest.warns(cache.CacheWarning, match="No space left"):
        model = build()
    assert not [p for p in own_cache.rglob("*") if p.is_file()]  # no module, no temporary file
    assert model._runner().module.CACHE is False
    monkeypatch.undo()
    want = trained(build("numpy"))
    for k, v in trained(model).items():
        np.testing.assert_allclose(v, want[k], rtol=1e-10)


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self.catch = warnings.catch_warnings()
        self.catch.__enter__()
        warnings.simplefilter("error", cache.CacheWarning)

    def __exit__(self, *exc):
        return self.catch.__exit__(*exc)


# ------------------------------------------------------------------ names never become code

HOSTILE = "W\ndef _f(a=__import__('os').system('touch PWNED')):\n    for _ in ():\n        if 1:#"


@pytest.mark.parametrize("newline", ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x85", "\u2028"])
def test_names_and_formulas_reach_the_generated_module_only_as_comments(newline, tmp_path,
                                                                        monkeypatch):
    """A parameter name and a formula that try to end their comment and define a function
    (the issue's reproduction, with each kind of line break) are escaped: the module defines
    only its own functions, and importing it runs nothing of theirs."""
    monkeypatch.chdir(tmp_path)
    name = HOSTILE.replace("\n", newline)
    a0, = arg_symbols(1)
    program = Program(
        buffers=(Buffer("X", ("n", 3), "input"), Buffer(name, (3, 2), "param"),
                 Buffer("Z", ("n", 2)), Buffer("L", (1, 1)), Buffer("G", (3, 2))),
        instrs=(Instr(Op.GEMM, "Z", ("X", name), note=f"X·{name}"),
                Instr(Op.COLSUM, "L", ("Z",), note=f"sum({name})"),
                Instr(Op.MAP, "G", (name,), body=2 * a0, note=name + "\rimport os")),
        outputs=(("loss", "L"), (name, "G")))
    p, g = UPDATE_SYMBOLS["p"], UPDATE_SYMBOLS["g"]
    source, _ = emit.generate({"loss_and_grad": program},
                              Update(((p, p - sp.Float(0.1) * g),)), "float64")
    tree = ast.parse(source)
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"loss_and_grad", "update_entries", "train_epochs"} <= defined
    assert all(re.fullmatch(r"loss_and_grad|update_entries|train_epochs|_(loss_and_grad|train)_\d+",
                            name) for name in defined), defined
    assert not any(isinstance(node, ast.FunctionDef) and node.name == "_f"
                   for node in ast.walk(tree))
    cache.load(source, "a test", tmp_path / "kernels")
    assert not (tmp_path / "PWNED").exists()


def test_a_symbol_the_kernel_has_no_value_for_is_refused_by_name():
    a0, = arg_symbols(1)
    stray = sp.Symbol("evil\nimport os")
    program = Program(
        buffers=(Buffer("X", ("n", 2), "input"), Buffer("A", ("n", 2)), Buffer("L", (1, 1))),
        instrs=(Instr(Op.MAP, "A", ("X",), body=a0 * stray), Instr(Op.COLSUM, "L", ("A",))),
        outputs=(("loss", "L"),))
    with pytest.raises(CodegenError, match="no value for the symbol 'evil\\\\nimport"):
        emit.generate({"loss": program}, None, "float64")


def test_a_full_disk_compiles_the_kernel_for_this_process_with_one_warning(own_cache,
                                                                          monkeypatch):
    """numba cannot write its machine code (ENOSPC): not a damaged entry to remove and retry
    forever, but a kernel compiled without the cache, and a warning that says so."""
    import numba.core.caching

    def full(self, key, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(numba.core.caching.IndexDataCacheFile, "save", full)
    model = build()
    with pytest.warns(cache.CacheWarning) as caught:
        params = trained(model)
    assert {re.search(r"could not keep the machine code of (\w+) .*No space left on device",
                      str(w.message))[1] for w in caught} == {"train_epochs"}
    monkeypatch.undo()
    reference = build(backend="numpy")
    for k, v in trained(reference).items():
        np.testing.assert_allclose(params[k], v, rtol=1e-9, atol=1e-12)


def test_the_cache_setting_expands_home_and_stays_where_a_relative_path_first_pointed(
        tmp_path, monkeypatch):
    from codegen.files import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SYMNET_CACHE_DIR", "~/kernels-of-this-test")
    assert cache_dir() == tmp_path / "kernels-of-this-test"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv("SYMNET_CACHE_DIR", "relative-kernels-of-this-test")
    assert cache_dir() == tmp_path / "a" / "relative-kernels-of-this-test"
    monkeypatch.chdir(tmp_path / "b")
    assert cache_dir() == tmp_path / "a" / "relative-kernels-of-this-test"


def predictions_agree_with_numpy(model):
    X, Y = data()
    reference = build(backend="numpy")
    for m in (model, reference):
        m.fit(X, Y, epochs=2, batch_size=4, shuffle=False, verbose=False)
    np.testing.assert_allclose(model.predict(X), reference.predict(X), rtol=1e-10)


@pytest.fixture
def free_core(monkeypatch):
    """Two threads and a core free, whatever the machine's load (tests run beside each other)."""
    from codegen.numba import runner

    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    monkeypatch.setattr(runner, "_a_core_is_free", lambda: True)


def test_a_second_core_compiles_kernels_beside_into_the_cache(own_cache, free_core):
    model = build()
    model.compile_kernels()
    runner = model._runner()
    # train_epochs compiled here; loss and forward by the helper process, loaded from its files
    assert [runner.cached(k) for k in ("train_epochs", "loss", "forward")] == [False, True, True]
    assert not model.kernels_cached
    predictions_agree_with_numpy(model)
    copy = model.fresh(seed=1)  # shares the compiled kernels
    assert copy.kernels_cached is None and copy.compile_kernels() >= 0 and copy.kernels_cached


def test_fit_has_the_kernel_predict_calls_compiled_beside_its_own(own_cache, free_core):
    model = build()
    X, Y = data()
    model.fit(X, Y, epochs=1, batch_size=4, verbose=False)
    model.predict(X)
    runner = model._runner()
    assert not runner.cached("train_epochs") and runner.cached("forward")
    assert "loss" not in runner.compiled  # no validation data: evaluate's kernel is left alone


def test_a_helper_that_fails_costs_only_the_compile_it_would_have_saved(own_cache, free_core,
                                                                        monkeypatch, tmp_path):
    broken = tmp_path / "python3-broken"  # a python that exits at once, with an error
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(broken))
    model = build()
    model.compile_kernels()
    runner = model._runner()
    assert not any(runner.cached(k) for k in ("train_epochs", "loss", "forward"))
    predictions_agree_with_numpy(model)


def test_one_thread_compiles_every_kernel_in_this_process(own_cache, monkeypatch):
    monkeypatch.setenv("SYMNET_NUM_THREADS", "1")
    monkeypatch.setattr(cache, "compile_beside", lambda *a: pytest.fail("a helper was started"))
    model = build()
    model.compile_kernels()
    assert not any(model._runner().cached(k) for k in ("train_epochs", "loss", "forward"))


@pytest.mark.parametrize("others, cores, free", [(0, 2, True), (1, 2, False), (2, 4, True),
                                                 (3, 4, False), (0, 1, False)])
def test_a_helper_needs_a_core_that_other_processes_leave_free(monkeypatch, others, cores, free):
    from codegen.numba import runner, runtime

    monkeypatch.setattr(runtime, "others_running", lambda: others)
    monkeypatch.setattr(runtime, "cores", lambda: cores)
    assert runner._a_core_is_free() is free


@pytest.mark.parametrize("load, free", [(0.4, True), (1.0, True), (1.3, False)])
def test_without_proc_the_load_average_decides(monkeypatch, load, free):
    from codegen.numba import runner, runtime

    monkeypatch.setattr(runtime, "others_running", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(runtime, "cores", lambda: 2)
    assert runner._a_core_is_free() is free


def test_the_threads_running_now_leave_out_this_process_own(tmp_path):
    from codegen.numba import runtime

    (tmp_path / "stat").write_text("cpu  1 2 3 4\nprocs_running 4\nprocs_blocked 0\n")
    for tid, state in [(10, "R"), (11, "S"), (12, "R")]:
        task = tmp_path / "self" / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "stat").write_text(f"{tid} (py (thread) x) {state} 1 2 3\n")  # ")" in a name
    assert runtime.others_running(str(tmp_path), samples=2) == 2
    assert runtime.others_running(str(tmp_path / "absent")) is None


def test_no_helper_on_a_busy_machine_or_without_a_python_program(own_cache, monkeypatch):
    from codegen.numba import runner

    compile_beside = cache.compile_beside
    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    monkeypatch.setattr(runner, "_a_core_is_free", lambda: False)
    started = []
    monkeypatch.setattr(cache, "compile_beside", lambda *a: started.append(a))
    model = build()
    model.compile_kernels()
    assert not started
    monkeypatch.setattr(sys, "executable", "/usr/bin/blender")  # an application embedding Python
    assert compile_beside(model._runner().module, ["forward"]) is None


def _main_waits_for_the_helper_claim(monkeypatch):
    """Make this process's first stage wait until the helper has claimed the last one, so that
    the helper lowers at least one stage however busy the machine is."""
    from codegen.numba import stages

    lower = stages._lower

    def lower_after_the_helper_claimed(function, args, flags, name):
        if stages._SHARE:
            share = stages._SHARE[0]
            last = share.directory / f"{list(share.typed)[-1]}.claim"
            deadline = time.monotonic() + 60
            while not last.exists() and share.helper.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        return lower(function, args, flags, name)

    monkeypatch.setattr(stages, "_lower", lower_after_the_helper_claimed)


def test_a_helper_lowers_stages_of_the_kernel_compiling_here_to_the_same_bits(own_cache,
                                                                              free_core,
                                                                              monkeypatch):
    _main_waits_for_the_helper_claim(monkeypatch)
    model = build()
    model.compile_kernels()
    runner = model._runner()
    assert runner.lowered_beside["train_epochs"]  # the helper's modules, linked in
    from codegen.numba import stages
    assert runner.compiled["train_epochs"][0]._library not in stages._LIBRARIES  # not kept
    shared = trained(model)
    # the same kernel lowered here alone, from a module and machine code compiled anew
    numba_files = numba.core.caching.FunctionCache(runner.module.train_epochs)._cache_path
    cache._remove_machine_code(Path(numba_files), runner.module.__name__)
    forget(model)
    monkeypatch.setenv("SYMNET_NUM_THREADS", "1")  # no helper (results: the same at any count)
    alone = build()
    alone.compile_kernels()
    assert "train_epochs" not in alone._runner().lowered_beside
    assert not alone._runner().cached("train_epochs")
    for name, value in trained(alone).items():
        np.testing.assert_array_equal(value, shared[name], err_msg=name)


def test_stages_a_helper_claimed_and_did_not_lower_are_lowered_here(own_cache, free_core,
                                                                    monkeypatch):
    """A helper that claims every stage and ends without lowering one (it crashed)."""
    _main_waits_for_the_helper_claim(monkeypatch)
    claim_all = (
        "import os, pickle, sys, time; from pathlib import Path\n"
        "d = Path(sys.argv[1]); s = d / 'stages.pickle'\n"
        "while not s.exists(): time.sleep(0.005)\n"
        "for name, _ in pickle.loads(s.read_bytes()):\n"
        "    (d / f'{name}.claim').touch()\n")

    def crashing_helper(module, names, stages=None):
        return subprocess.Popen([sys.executable, "-c", claim_all, str(stages)])

    monkeypatch.setattr(cache, "compile_beside", crashing_helper)
    model = build()
    model.compile_kernels()
    assert model._runner().lowered_beside["train_epochs"] == []
    predictions_agree_with_numpy(model)


FRESH_PROCESS = """
import hashlib, json, numpy as np, symnet as sn
X, Y = sn.Input("X", 4), sn.Input("Y", 3)
h = sn.batch_norm(sn.dense(X, 6, sn.gelu), "1")
h = sn.dropout(sn.dense(h, 6, sn.softplus), 0.2)
h = sn.dense(sn.layer_norm(sn.dense(h, 6, sn.elu(1.0)), "3"), 6, sn.maxout(2))
out = sn.dense(sn.dense(h, 5, sn.swish), 3)
model = sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y], prediction=out,
                   optimizer=sn.optim.Adam(lr=0.01), seed=0, dtype="float64")
model.compile_kernels()
rng = np.random.default_rng(0)
Xd, Yd = rng.normal(size=(20, 4)), np.eye(3)[rng.integers(0, 3, 20)]
model.fit(Xd, Yd, epochs=2, batch_size=8, verbose=False, validation_data=(Xd, Yd))
digest = hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for _, v in
                                 sorted(model.params.items()))).hexdigest()
print(json.dumps({"cached": model.kernels_cached, "params": digest,
                  "predictions": model.predict(Xd).tolist()}))
"""


def test_a_new_process_runs_kernels_of_every_kind_from_the_cache_as_compiled(own_cache):
    """Kernels loaded from the cache skip numba's compiler set-up (its typing and lowering
    registries): a new process must run them as the process that compiled them did."""
    def run():
        proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True,
                              text=True, timeout=600, env={**os.environ, "SYMNET_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr
        return __import__("json").loads(proc.stdout.splitlines()[-1])

    compiled, loaded = run(), run()
    assert not compiled["cached"] and loaded["cached"]
    assert loaded["params"] == compiled["params"]
    assert loaded["predictions"] == compiled["predictions"]


def test_the_protocol_machine_code_is_kept_and_a_damaged_copy_compiled_again(own_cache,
                                                                             monkeypatch):
    from codegen.numba import protocol

    compiles = []
    compile_ = protocol._compile
    monkeypatch.setattr(protocol, "_compile", lambda *a: compiles.append(1) or compile_(*a))
    protocol.build()
    [stored] = own_cache.glob("protocol-*.pickle")
    protocol.build()
    assert len(compiles) == 1  # the second came from the cache
    stored.write_bytes(b"\x80\x04garbage")
    addresses = protocol.build()
    assert len(compiles) == 2 and pickle.loads(stored.read_bytes())
    assert set(addresses) >= {"claim", "finish", "publish", "wait", "run", "worker"}
    predictions_agree_with_numpy(build())  # kernels call the protocol by these symbols


def test_a_shared_compile_serves_only_the_stages_of_its_own_module(tmp_path):
    from codegen.numba import stages

    def stage():
        pass

    stage.__module__ = "symnet_other"  # a kernel another thread compiles meanwhile
    with stages.shared("symnet_this", tmp_path, helper=None) as share:
        assert stages._share_of(stage) is None
        stage.__module__ = "symnet_this"
        assert stages._share_of(stage) is share
    assert stages._share_of(stage) is None


def test_a_helper_that_writes_nothing_is_waited_for_once_for_all_stages(tmp_path, monkeypatch):
    from codegen.numba import stages

    class Running:  # a helper that never ends and never writes
        polls = 0

        def poll(self):
            self.polls += 1

    monkeypatch.setattr(stages, "WAIT_S", 0.05)
    helper = Running()
    share = stages.Share("symnet_this", tmp_path, helper)
    assert share.take("first") is None and share.given_up
    polls = helper.polls
    assert share.take("second") is None and helper.polls == polls  # not waited for again


KILLED_PARENT = """
import sys, time
from codegen.numba import cache, runner, stages
runner._a_core_is_free = lambda: True
start = cache.compile_beside
def started(module, names, directory=None):
    helper = start(module, names, directory)
    print(helper.pid, directory, flush=True)
    return helper
cache.compile_beside = started
lower = stages._lower
def lower_then_hang(*args):
    code = lower(*args)
    time.sleep(600)  # killed meanwhile
stages._lower = lower_then_hang
import symnet as sn
X, Y = sn.Input("X", 3), sn.Input("Y", 1)
out = sn.dense(sn.dense(X, 4, sn.tanh), 1)
sn.compile(sn.mse(out, Y), inputs=[X], targets=[Y], prediction=out, seed=0).compile_kernels()
"""


@pytest.mark.parametrize("kill_after", [0.2, 1.0, 4.0])  # before its start, in, past stages
def test_a_helper_whose_process_is_killed_stops_and_removes_its_directory(own_cache,
                                                                          kill_after):
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "SYMNET_NUM_THREADS": "2"})
    pid, directory = parent.stdout.readline().split()
    time.sleep(kill_after)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 40  # it would otherwise wait 60 s, then compile on
    while time.monotonic() < deadline and _running_process(int(pid)):
        time.sleep(0.1)
    assert not _running_process(int(pid))
    assert not Path(directory).exists()


def _running_process(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
