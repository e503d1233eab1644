"""Model files: a forged or damaged file is a DataError before anything runs or allocates, load
reads only the arrays the declaration names, and save replaces the file atomically (a symlink
stays a link, the mode is kept, temporary files of killed saves are cleaned)."""

import errno
import fcntl
import json
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import sympy as sp
from conftest import deep_residual, make_data

import symnet as sn
from codegen import files
from symnet import serialize, validate

x = sn.functions.x
cube = sn.activation("cube", x**3 / 3 + x, x, latex=r"\kappa")


def small_model(backend="numpy", activation=sn.tanh, optimizer=None):
    X, Y = sn.Input("X", 4), sn.Input("Y", 3)
    h = sn.dense(X, 5, activation, name="1")
    out = sn.dense(h, 3, name="2")
    optimizer = optimizer or sn.optim.Adam(lr=sn.schedules.cosine(0.1, 100))
    return sn.compile(sn.softmax_cross_entropy(out, Y), inputs=[X], targets=[Y],
                      prediction=sn.softmax(out), optimizer=optimizer, dtype="float64", seed=0,
                      backend=backend)


def trained(model, epochs=2):
    """``model`` after ``epochs`` epochs in a fixed order."""
    X, Y = make_data(20)
    model.fit(X, Y, epochs=epochs, batch_size=5, shuffle=False, verbose=False)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained model (Adam: two state arrays per parameter) and the file it was saved to."""
    model = trained(small_model())
    path = tmp_path_factory.mktemp("saved") / "m.npz"
    model.save(path)
    return model, path


def contents(path):
    """``(meta, {key: array})`` of a model file, for forging variants of it."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def forge(path, out, meta=None, meta_text=None, **arrays):
    """Write to ``out`` the file at ``path`` with its meta or some of its arrays replaced."""
    original, stored = contents(path)
    stored.update({k.replace("__", "/"): v for k, v in arrays.items()})
    text = meta_text if meta_text is not None else json.dumps(meta if meta is not None else original)
    np.savez(out, meta=np.array(text), **stored)
    return out


def nodes(tree):
    """Every list node of a meta tree, depth first."""
    if isinstance(tree, list):
        yield tree
        for item in tree:
            yield from nodes(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from nodes(item)


def renamed(meta, tag, old, new):
    for node in nodes(meta):
        if node[:2] == [tag, old]:
            node[1] = new
    return meta


def reshaped(meta, name, *dims):
    for node in nodes(meta):
        if node[:2] == ["MatrixSymbol", name]:
            node[2:] = [["Integer", str(d)] if isinstance(d, int) else d for d in dims]
    return meta


def nested(depth):
    tree = ["MatrixSymbol", "X", ["Symbol", "n", ["integer", "positive"]], ["Integer", "4"]]
    for _ in range(depth):
        tree = ["Transpose", tree]
    return tree


def without(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


def setting(key, value):
    return lambda m: {**m, key: value}


def setting_optimizer(**entries):
    return lambda m: {**m, "optimizer": {**m["optimizer"], **entries}}


def setting_lr(value):
    return lambda m: {**m, "optimizer": {**m["optimizer"], "args": {**m["optimizer"]["args"],
                                                                     "lr": value}}}


MEMORY = serialize.physical_memory()

# Each case turns the saved meta into a forged one; loading it must raise a DataError whose
# message matches the pattern.
BAD_META = {
    **{f"no {key}": (without(key), rf"lacks the entries \['{key}'\]")
       for key in serialize.META_KEYS},
    "shuffle state of another generator": (
        setting("shuffle", {"bit_generator": "MT19937", "state": {"state": 1, "inc": 3},
                            "has_uint32": 0, "uinteger": 0}),
        "shuffle is .*; expected a PCG64 generator's state"),
    "shuffle state as text": (setting("shuffle", "seed 0"), "expected a PCG64 generator's state"),
    "shuffle state with an even increment": (
        setting("shuffle", {"bit_generator": "PCG64", "state": {"state": 1, "inc": 2},
                            "has_uint32": 0, "uinteger": 0}), "expected a PCG64 generator's state"),
    "steps negative": (setting("steps", -1), "steps is -1; expected a non-negative integer"),
    "steps fractional": (setting("steps", 2.5), "steps is 2.5"),
    "steps a boolean": (setting("steps", True), "steps is True"),
    "steps as text": (setting("steps", "7"), "steps is '7'"),
    "steps beyond int64": (setting("steps", 2**70), "steps is"),
    "dtype float16": (setting("dtype", "float16"), "dtype is 'float16'; expected 'float32'"),
    "dtype a number": (setting("dtype", 3), "dtype is 3"),
    "backend unknown": (setting("backend", "cuda"), "backend is 'cuda'; expected one of"),
    "backend a list": (setting("backend", ["numba"]), r"backend is \['numba'\]"),
    "inputs not a list": (setting("inputs", "X"), "inputs is 'X'; expected a list"),
    "meta a list": (lambda m: [m], "not a symnet model file"),
    "format version 3": (setting("version", 3), "format version 3; this symnet reads versions 1, 2"),
    "reference to no node": (setting("prediction", ["Ref", 0]), "refers to no node written"),
    "reference that is not a number": (setting("prediction", ["Ref", "0"]), "refers to no node"),
    "Let numbered out of turn": (lambda m: {**m, "prediction": ["Let", 5, m["inputs"][0]]},
                                 "a Let node is numbered 5; expected 0"),
    "Let of a number": (setting("prediction", ["Let", 0, ["Integer", "1"]]),
                        "not a matrix expression"),
    "Let without its node": (setting("prediction", ["Let", 0]), "a Let node has 1 arguments"),
    "nested 2100 deep": (setting("loss", nested(2100)), "nested more than 2000 levels"),
    "nested 2500 deep prediction": (setting("prediction", nested(2500)), "nested more than 2000"),
    "unknown node type": (setting("loss", ["__import__", ["Symbol", "os", []]]),
                          "node type '__import__'"),
    "node not a list": (setting("loss", "X"), "expected an expression"),
    "empty node": (setting("prediction", []), r"expected \[node, ...\]"),
    "MatrixSymbol without shape": (setting("prediction", ["MatrixSymbol", "X"]),
                                   "a MatrixSymbol node has 3 arguments, this one has 1"),
    "10⁹×10⁹ parameter": (lambda m: reshaped(m, "W1", 10**9, 10**9),
                          "W1 is 1000000000×1000000000: .* do not fit in this machine's memory"),
    "parameters beyond memory together": (
        lambda m: reshaped(reshaped(m, "X", ["Symbol", "n", ["integer", "positive"]],
                                    MEMORY // 25), "W1", MEMORY // 25, 5),
        "parameters and optimizer state need .* more than this machine's memory"),
    "zero columns": (lambda m: reshaped(m, "W2", 5, 0), "dimension 0; dimensions are positive"),
    "symbolic parameter shape": (lambda m: reshaped(m, "W2", 5, ["Symbol", "k", []]),
                                 "dimension k"),
    "matrix name with code": (
        lambda m: renamed(m, "MatrixSymbol", "W1", "W\ndef _f(a=__import__('os')):#"),
        "names a matrix .* must be Python identifiers"),
    "matrix name with a carriage return": (lambda m: renamed(m, "MatrixSymbol", "b1", "b1\r#"),
                                           "Python identifiers"),
    "symbol name with code": (lambda m: renamed(m, "Symbol", "x", "x)+__import__('os')"),
                              "names a symbol"),
    "activation name with code": (lambda m: renamed(m, "Activation", "tanh", "tanh\nimport os"),
                                  "activation named 'tanh\\\\nimport os'"),
    "activation name with a bad number": (lambda m: renamed(m, "Activation", "tanh",
                                                            "leaky_relu[0.1); 1]"),
                                          "activation named"),
    "activation of a matrix symbol": (
        lambda m: [n.__setitem__(2, ["MatrixSymbol", "X", ["Integer", "1"], ["Integer", "1"]])
                   for n in nodes(m) if n[:1] == ["Activation"]] and m,
        "its definition must be a scalar expression in x"),
    "unknown symbol assumption": (
        lambda m: [n.__setitem__(2, ["commutative"]) for n in nodes(m) if n[:1] == ["Symbol"]]
        and m, "unknown symbol assumptions"),
    "float that is not finite": (
        lambda m: {**m, "loss": ["Mul", ["Float", "nan"], m["loss"]]}, "expected a finite number"),
    "float that is not a number": (
        lambda m: {**m, "loss": ["Mul", ["Float", "abc"], m["loss"]]}, "expected a finite number"),
    "integer that is not one": (
        lambda m: {**m, "loss": ["Mul", ["Integer", "1e3"], m["loss"]]}, "expected an integer"),
    "integer of 5000 digits": (
        lambda m: {**m, "loss": ["Mul", ["Integer", "9" * 5000], m["loss"]]},
        "at most 100 digits"),
    "division by zero": (
        lambda m: {**m, "loss": ["Mul", ["Rational", "1", "0"], m["loss"]]}, "divides by zero"),
    "power with a billion digits": (
        lambda m: {**m, "loss": ["Mul", ["Pow", ["Integer", "10"], ["Integer", "1000000000"]],
                                 m["loss"]]}, "to the power 1000000000"),
    "unknown constant": (lambda m: {**m, "loss": ["Mul", ["Constant", "oo"], m["loss"]]},
                         "constant 'oo'"),
    "boolean not a boolean": (lambda m: {**m, "loss": ["Mul", ["Boolean", "yes"], m["loss"]]},
                              "Boolean node holds 'yes'"),
    "shapes that do not multiply": (
        lambda m: {**m, "prediction": ["MatMul", m["inputs"][0], ["MatrixSymbol", "W2",
                                                                   ["Integer", "5"],
                                                                   ["Integer", "3"]]]},
        "its MatMul node cannot be built"),
    "several predictions, none given": (lambda m: {**m, "prediction": {"several": []}},
                                        r"expected an expression or \{'several'"),
    "several predictions beside other keys": (
        lambda m: {**m, "prediction": {"several": [m["prediction"]], "code": "x"}},
        r"expected an expression or \{'several'"),
    "optimizer class from elsewhere": (setting_optimizer(**{"class": "os.system"}),
                                       "optimizer 'os.system' is not one of sn.optim's"),
    "optimizer base class": (setting_optimizer(**{"class": "Optimizer"}), "is not one of"),
    "optimizer argument unknown": (setting_optimizer(args={"lr": 0.1, "command": "rm"}),
                                   r"arguments \['command'\] that sn.optim.Adam does not take"),
    "optimizer arguments not a dict": (setting_optimizer(args=[0.1]), "expected a dict"),
    "lr as text": (setting_lr("0.1"), "lr='0.1'; expected a number"),
    "lr negative": (setting_lr(-1), "optimizer is invalid: .*lr must be .*, got -1"),
    "lr a nested list": (setting_lr([[0.1]]), "expected a number"),
    "schedule with other entries": (setting_lr({"schedule": "cosine"}), "expected schedule, expr"),
    "schedule of 1/0": (  # these two were DeclarationErrors advising the caller's code
        setting_lr({"schedule": "s", "expr": ["Pow", ["Integer", "0"], ["Integer", "-1"]],
                    "base": 0.1}), "the file is damaged: what it declares is refused .*zoo"),
    "input of another width": (
        lambda m: {**m, "inputs": [[*m["inputs"][0][:3], ["Integer", "5"]], *m["inputs"][1:]]},
        "the file is damaged: what it declares is refused"),
    "schedule in another symbol": (
        setting_lr({"schedule": "cosine", "expr": ["Symbol", "s", ["real"]], "base": 0.1}),
        "must be an expression in the step t"),
}


@pytest.mark.parametrize("case", BAD_META)
def test_a_forged_declaration_is_refused_with_a_data_error(case, saved, tmp_path):
    model, path = saved
    change, message = BAD_META[case]
    meta, _ = contents(path)
    with validate.deep_recursion("forging"):  # JSON nested 2,500 deep
        bad = forge(path, tmp_path / "bad.npz", meta=change(meta))
    with pytest.raises(sn.DataError, match=message) as err:
        sn.load(bad)
    assert str(err.value).startswith(f"{bad}: ") and len(str(err.value)) > 50


def test_a_backend_that_fails_on_this_machine_is_not_called_a_damaged_file(saved, monkeypatch):
    # a refused declaration in a file is damage; the backend's refusal is this machine's
    from codegen.ir import CodegenError
    from symnet import model as model_module

    def failing(name):
        def runner(*args):
            raise CodegenError("symnet's numba backend runs with numba>=0.65,<0.69")
        return runner

    monkeypatch.setattr(model_module, "_backend_class", failing)
    with pytest.raises(sn.DeclarationError, match=r"numba>=0\.65.*backend='numpy'") as err:
        sn.load(saved[1], backend="numba")
    assert "damaged" not in str(err.value)


def test_a_deep_network_is_written_once_a_node_and_loads_back(tmp_path):
    """A batch norm reads its Z three times: written as a tree, 16 of them would be ~4¹⁶ nodes
    (saving 16 did not finish); each node read more than once is written once (Let, Ref)."""
    loss, X, Y, out = deep_residual(16)
    model = sn.compile(loss, inputs=[X], targets=[Y], prediction=sn.softmax(out),
                       backend="numpy", dtype="float64", seed=0)
    Xb, Yb = make_data(8, out=2)
    model.fit(Xb, Yb, epochs=1, batch_size=4, verbose=False)
    model.save(tmp_path / "deep.npz")
    meta, _ = contents(tmp_path / "deep.npz")
    assert len(json.dumps(meta)) < 300_000 and any(n[:1] == ["Ref"] for n in nodes(meta))
    loaded = sn.load(tmp_path / "deep.npz")
    np.testing.assert_array_equal(loaded.predict(Xb), model.predict(Xb))
    np.testing.assert_array_equal(loaded.loss_and_grad(Xb, Yb)[0], model.loss_and_grad(Xb, Yb)[0])


def test_a_version_1_file_of_trees_still_loads(saved, tmp_path):
    model, path = saved
    meta, _ = contents(path)

    def tree(data, lets):  # Let and Ref written out in full, as version 1 wrote them
        if isinstance(data, list) and data[:1] == ["Ref"]:
            return lets[data[1]]
        if isinstance(data, list) and data[:1] == ["Let"]:
            lets[data[1]] = tree(data[2], lets)
            return lets[data[1]]
        return [tree(d, lets) for d in data] if isinstance(data, list) else data

    assert any(n[:1] == ["Let"] for n in nodes(meta["loss"]))  # Z in logsumexp(Z) and Z ∘ Y
    legacy = {**meta, "version": 1, "loss": tree(meta["loss"], {}),
              "prediction": tree(meta["prediction"], {})}
    assert not any(n[:1] in (["Let"], ["Ref"]) for n in nodes(legacy))
    old = sn.load(forge(path, tmp_path / "v1.npz", meta=legacy))
    X, _ = make_data(6)
    np.testing.assert_array_equal(old.predict(X), model.predict(X))


DEEP = "[" * 100_000 + "]" * 100_000
BAD_TEXT = {
    "JSON 100 000 levels deep": ('{"format": "symnet-model", "loss": ' + DEEP + "}",
                                 "nests too deeply"),
    "not JSON": ("{'format': 'symnet-model'", "is not valid JSON"),
    "NaN in JSON": ('{"format": "symnet-model", "version": 1, "steps": NaN}', "contains NaN"),
    "huge integer in JSON": ('{"steps": ' + "9" * 5000 + "}", "is not valid JSON"),
}


@pytest.mark.parametrize("case", BAD_TEXT)
def test_meta_that_is_not_a_declaration_is_refused(case, saved, tmp_path):
    text, message = BAD_TEXT[case]
    bad = forge(saved[1], tmp_path / "bad.npz", meta_text=text)
    with pytest.raises(sn.DataError, match=message):
        sn.load(bad)


def test_an_oversized_or_misshapen_meta_entry_is_refused_before_it_is_read(saved, tmp_path):
    _, arrays = contents(saved[1])
    big = tmp_path / "big.npz"
    np.savez_compressed(big, meta=np.array(" " * (5 * 2**20)), **arrays)  # 20 MiB as UCS-4
    with pytest.raises(sn.DataError, match="'meta' entry is .* bytes, more than the 16777216"):
        sn.load(big)
    listed = tmp_path / "listed.npz"
    np.savez(listed, meta=np.array(["{}", "{}"]), **arrays)
    with pytest.raises(sn.DataError, match="'meta' entry is a <U2 array of shape \\(2,\\), not "
                                           "the text"):
        sn.load(listed)


def test_a_forged_latex_name_falls_back_to_the_default(tmp_path):
    model = small_model(activation=cube)
    model.save(tmp_path / "m.npz")
    meta, _ = contents(tmp_path / "m.npz")
    for node in nodes(meta):
        if node[:2] == ["Activation", "cube"]:
            node[4] = r"\kappa$}\input{/etc/passwd}"
    loaded = sn.load(forge(tmp_path / "m.npz", tmp_path / "f.npz", meta=meta))
    latex = {f.latex_name for f in loaded.loss_expr.atoms(sn.functions.ScalarActivation)}
    assert latex == {r"\operatorname{cube}"}
    assert sn.load(tmp_path / "m.npz").latex() == model.latex()  # a plain name is kept


def test_save_refuses_names_that_load_would_refuse():
    with pytest.raises(sn.DataError, match="named 'W 1': names in a model file must be"):
        serialize.encode(sp.MatrixSymbol("W 1", 2, 2))


# ---------------------------------------------------------------------------- arrays


def _object_array():
    a = np.empty((4, 5), dtype=object)
    a[...] = 1.0
    return a


BAD_ARRAYS = {
    "complex parameter": ({"param__W1": np.ones((4, 5), complex)},
                          "parameter W1 is stored as complex128; .* must be real"),
    "object parameter": ({"param__W1": _object_array()}, "W1 is stored as object"),
    "string parameter": ({"param__b1": np.full((1, 5), "1.0")}, "b1 is stored as <U3"),
    "boolean parameter": ({"param__b1": np.ones((1, 5), bool)}, "b1 is stored as bool"),
    "NaN parameter": ({"param__W2": np.full((5, 3), np.nan)},
                      "parameter W2 has 15 NaN or infinite entries"),
    "inf in the optimizer state": ({"state__W1__m": np.full((4, 5), np.inf)},
                                   "optimizer state W1/m has 20 NaN or infinite"),
    "float64 beyond float32": ({"param__W1": np.full((4, 5), 1e300)}, None),
    "wrong shape": ({"param__W1": np.zeros((5, 4))},
                    r"W1 has shape \(5, 4\) but the declaration gives \(4, 5\)"),
    "huge declared shape": ({"param__W1": np.zeros((1, 1))}, r"shape \(1, 1\)"),
}


@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_parameters_that_are_not_real_finite_arrays_of_the_declared_shape_are_refused(
        case, saved, tmp_path):
    arrays, message = BAD_ARRAYS[case]
    path = saved[1]
    if message is None:  # finite in float64, inf in a float32 model
        meta, _ = contents(path)
        path = forge(path, tmp_path / "f32.npz", meta={**meta, "dtype": "float32"})
        message = "W1 has 20 NaN or infinite entries \\(of 20\\) in float32"
    with pytest.raises(sn.DataError, match=message) as err:
        sn.load(forge(path, tmp_path / "bad.npz", **arrays))
    assert len(str(err.value)) > 60


def test_a_missing_or_truncated_array_is_refused(saved, tmp_path):
    _, arrays = contents(saved[1])
    meta = np.array(json.dumps(contents(saved[1])[0]))
    missing = tmp_path / "missing.npz"
    np.savez(missing, meta=meta, **{k: v for k, v in arrays.items() if k != "state/b2/v"})
    with pytest.raises(sn.DataError, match="has no array 'state/b2/v'"):
        sn.load(missing)
    cut = tmp_path / "cut.npz"
    np.savez(cut, meta=meta, **{k: v for k, v in arrays.items() if k != "param/W1"})
    with zipfile.ZipFile(cut, "a") as z, z.open("param/W1.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                 "shape": (4, 5)})
        f.write(b"\0" * 64)  # 8 of the 20 entries
    with pytest.raises(sn.DataError, match=r"'param/W1' is truncated \(64 of 160 bytes\)"):
        sn.load(cut)


def test_integer_and_fortran_ordered_parameters_are_converted(saved, tmp_path):
    model, path = saved
    W1 = np.arange(20).reshape(4, 5)
    W2 = np.asfortranarray(model.params["W2"])
    loaded = sn.load(forge(path, tmp_path / "f.npz", param__W1=W1, param__W2=W2))
    np.testing.assert_array_equal(loaded.params["W1"], W1.astype(float))
    np.testing.assert_array_equal(loaded.params["W2"], model.params["W2"])


def test_an_unused_array_of_300_mb_is_never_read(saved, tmp_path):
    _, path = saved
    big = tmp_path / "big.npz"
    big.write_bytes(path.read_bytes())
    size = 300 * 2**20
    with (zipfile.ZipFile(big, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z,
          z.open("junk.npy", "w", force_zip64=True) as f):  # written in pieces: never in memory
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (size // 8,)})
        chunk = bytes(2**20)
        for _ in range(size // len(chunk)):
            f.write(chunk)
    assert big.stat().st_size < 2 * 2**20
    tracemalloc.start()
    try:
        sn.load(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * 2**20, f"loading allocated {peak / 2**20:.0f} MiB"


# ---------------------------------------------------------------------------- round trips


def assert_same(a, b):
    assert a._steps == b._steps > 0
    assert a.formulas() == b.formulas()
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        for s in a._state[k]:
            np.testing.assert_array_equal(a._state[k][s], b._state[k][s])


@pytest.mark.parametrize("activation", [sn.tanh, sn.leaky_relu(1e-5), sn.elu(0.5), cube],
                         ids=["tanh", "leaky_relu", "elu", "custom"])
def test_round_trip_keeps_parameters_optimizer_state_steps_and_predictions(activation, tmp_path):
    model = trained(small_model(activation=activation))
    model.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz")
    assert_same(model, loaded)
    X, _ = make_data(7, seed=1)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    for m in (model, loaded):  # Adam's moments, its step count and the schedule came back
        trained(m, epochs=1)
    assert_same(model, loaded)


def test_a_loaded_or_unpickled_model_shuffles_on_as_the_saved_one(tmp_path):
    X, Y = make_data(20)
    model = small_model()
    model.fit(X, Y, epochs=1, batch_size=5, verbose=False)  # the generator has moved on
    model.save(tmp_path / "m.npz")
    copies = [sn.load(tmp_path / "m.npz"), sn.load(tmp_path / "m.npz"),
              pickle.loads(pickle.dumps(model))]
    for m in (model, *copies):
        m.fit(X, Y, epochs=2, batch_size=5, verbose=False)
    for m in copies:
        assert_same(model, m)
        assert m.history.loss == model.history.loss


def test_round_trip_on_the_numba_backend(tmp_path):
    model = trained(small_model(backend="numba", optimizer=sn.optim.SGD(lr=0.1, momentum=0.9)))
    model.save(tmp_path / "m.npz")
    loaded = sn.load(tmp_path / "m.npz")
    assert loaded.backend == "numba"
    assert_same(model, loaded)
    X, _ = make_data(7, seed=1)
    np.testing.assert_allclose(loaded.predict(X), model.predict(X), rtol=1e-12)


# ---------------------------------------------------------------------------- save


def test_save_through_a_symlink_replaces_the_target_and_keeps_the_link(saved, tmp_path):
    model, _ = saved
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "real.npz"
    target.write_bytes(b"old")
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert_same(model, sn.load(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "models"]
    assert [p.name for p in target.parent.iterdir()] == ["real.npz"]


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o640])
def test_save_keeps_the_permission_bits_of_the_file_it_replaces(mode, saved, tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"old")
    path.chmod(mode)
    saved[0].save(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_new_file_gets_the_mode_the_umask_allows(saved, tmp_path):
    old = os.umask(0o027)
    try:
        saved[0].save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o640


def test_save_refuses_a_device_a_directory_and_a_fifo(saved, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for path, kind in [("/dev/null", "a character device"), (tmp_path / "dir", "a directory"),
                       (tmp_path / "fifo", "a fifo")]:
        with pytest.raises(sn.DataError, match=f"exists and is {kind}, not a regular file"):
            saved[0].save(path)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo"]


def test_save_to_a_missing_directory_or_not_a_path_is_a_data_error(saved, tmp_path):
    (tmp_path / "file").write_text("")
    for path, reason in [(tmp_path / "missing" / "m.npz", "No such file or directory"),
                         (tmp_path / "file" / "m.npz", "Not a directory")]:
        with pytest.raises(sn.DataError, match=f"cannot save the model to {path}: {reason}; "
                                               f"pass a path in an existing directory"):
            saved[0].save(path)
    with pytest.raises(sn.DataError, match="save\\(path\\) takes a file name such as "
                                           "'model.npz', got int 3"):
        saved[0].save(3)
    with pytest.raises(sn.DataError, match="sn.load\\(path\\) takes a file name such as "
                                           "'model.npz', got int 3"):
        sn.load(3)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_path_from_home_is_expanded_as_the_shell_would(saved, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    saved[0].save("~/m.npz")
    assert (tmp_path / "m.npz").is_file()
    assert sn.load("~/m.npz").params.keys() == saved[0].params.keys()
    with pytest.raises(sn.DataError, match=r"no model file at ~no_such_user_here/m.npz"):
        sn.load("~no_such_user_here/m.npz")  # left as the shell leaves it (was a RuntimeError)


def test_save_removes_temporary_files_of_killed_saves_but_not_a_live_one(saved, tmp_path):
    path = tmp_path / "m.npz"
    orphans = [tmp_path / f".m.npz.{tag}.tmp" for tag in ("k1ll3d00", "abcdefgh")]
    for orphan in orphans:
        orphan.write_bytes(b"partial")
    live = tmp_path / ".m.npz.wr1t1ng0.tmp"
    other = tmp_path / ".other.npz.k1ll3d00.tmp"  # another file's: its own saves clean it
    for p in (live, other):
        p.write_bytes(b"partial")
    with open(live, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        saved[0].save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, "m.npz"])


@pytest.mark.parametrize("failure, raised", [
    (RuntimeError("boom"), RuntimeError),
    (OSError(errno.ENOSPC, "No space"), sn.DataError),  # the disk is full: said as such
    (KeyboardInterrupt(), KeyboardInterrupt)], ids=["error", "ENOSPC", "interrupt"])
def test_a_save_that_fails_midway_leaves_the_old_file_and_no_temporary_file(
        failure, raised, saved, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    saved[0].save(path)
    before = path.read_bytes()

    def savez(f, **arrays):
        f.write(b"PK\3\4 half a model")
        raise failure

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(raised, match="No space; a file that was there is unchanged"
                       if raised is sn.DataError else None):
        saved[0].save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_a_temporary_file_swept_before_it_was_locked_is_replaced(tmp_path, monkeypatch):
    # A concurrent save may take our new temporary file for an orphan in the instant between
    # its creation and our lock; the write must then start over with a new one.
    real, calls = files.tempfile.mkstemp, []

    def swept_once(**kwargs):
        fd, name = real(**kwargs)
        if not calls:
            os.unlink(name)
        calls.append(name)
        return fd, name

    monkeypatch.setattr(files.tempfile, "mkstemp", swept_once)
    files.atomic_write(tmp_path / "f", lambda f: f.write(b"data"))
    assert (tmp_path / "f").read_bytes() == b"data" and len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_concurrent_writers_never_remove_each_others_temporary_files(tmp_path):
    errors = []

    def slow_write(f):  # long enough for the other writers' sweeps to find the file
        f.write(b"x" * 1000)
        f.flush()
        time.sleep(0.002)
        f.write(b"end")

    def writer():
        try:
            for _ in range(15):
                files.atomic_write(tmp_path / "f", slow_write)
        except Exception as err:  # collected: an error in a thread would go unseen
            errors.append(err)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert (tmp_path / "f").read_bytes() == b"x" * 1000 + b"end"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_the_temporary_file_of_a_killed_writer_is_removed_by_the_next_save(saved, tmp_path):
    # The writer dies holding its lock; the kernel releases it, so the next save may take it.
    code = ("import sys, time; from codegen import files; "
            "files.atomic_write(sys.argv[1], lambda f: (f.write(b'part'), f.flush(), "
            "print('writing', flush=True), time.sleep(60)))")
    path = tmp_path / "m.npz"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    writer = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                              env=env)
    try:
        assert writer.stdout.readline() == b"writing\n"
        (orphan,) = tmp_path.glob(".m.npz.*.tmp")
        saved[0].save(path)  # the writer is alive: its file stays
        assert orphan.exists()
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    saved[0].save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
