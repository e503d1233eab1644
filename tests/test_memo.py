"""symnet.memo: slow symbolic searches answered once per cache directory, never wrongly."""

import sympy as sp

import symnet as sn
from symnet import memo, rewrite
from symnet.functions import derivative, x


def ANY(answer):  # a check that accepts every answer
    return True


def counting(answer):
    calls = []

    def search():
        calls.append(1)
        return answer

    return search, calls


def test_an_answer_is_searched_once_and_read_back(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    search, calls = counting(sp.Lambda(x, x * (1 - x)))
    first = memo.remembered("test", "q", search, ANY)
    again = memo.remembered("test", "q", search, ANY)
    assert first == again == sp.Lambda(x, x * (1 - x))
    assert len(calls) == 1
    none, calls = counting(None)
    assert memo.remembered("test", "nothing", none, ANY) is None
    assert memo.remembered("test", "nothing", none, ANY) is None
    assert len(calls) == 1


def test_damaged_or_foreign_files_are_searched_again(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    search, calls = counting(sp.Integer(7))
    memo.remembered("test", "q", search, ANY)
    (path,) = (tmp_path / "derivations").iterdir()
    path.write_text(path.read_text()[:-3])  # truncated
    assert memo.remembered("test", "q", search, ANY) == 7
    path.write_text(f"test {memo.VERSION}\nanother question\n8")  # a hash collision's file
    assert memo.remembered("test", "q", search, ANY) == 7
    assert len(calls) == 3
    assert memo.remembered("test", "q", search, ANY) == 7  # repaired by the last search
    assert len(calls) == 3


def test_what_the_data_format_cannot_hold_is_not_remembered(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    mine = sn.activation("mine", x**3 + x, x).function(x)  # decodes as another class
    search, calls = counting(mine)
    assert memo.remembered("test", "q", search, ANY) == mine
    assert memo.remembered("test", "q", search, ANY) == mine
    assert len(calls) == 2
    builtin, calls = counting(sn.sigmoid.function(x) * (1 - x))  # symnet's own: kept
    memo.remembered("test", "b", builtin, ANY)
    assert memo.remembered("test", "b", builtin, ANY) == sn.sigmoid.function(x) * (1 - x)
    assert len(calls) == 1


def test_an_unwritable_location_only_costs_the_search(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(blocker / "cache"))
    search, calls = counting(sp.Integer(3))
    assert memo.remembered("test", "q", search, ANY) == 3
    assert memo.remembered("test", "q", search, ANY) == 3
    assert len(calls) == 2


def test_two_activations_of_one_name_get_their_own_output_forms(monkeypatch, tmp_path):
    """The question holds the definitions: a remembered form of one "f" never serves another."""
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    forms = []
    for definition in (1 / (1 + sp.exp(-x)), sp.tanh(x)):
        f = sn.activation("f", definition, x).function
        rewrite.output_derivative.cache_clear()
        forms.append(rewrite.output_derivative(sp.Lambda(x, f(x)), derivative(f)))
    assert forms == [sp.Lambda(x, x * (1 - x)), sp.Lambda(x, 1 - x**2)]
    rewrite.output_derivative.cache_clear()
    f = sn.activation("f", 1 / (1 + sp.exp(-x)), x).function
    assert rewrite.output_derivative(sp.Lambda(x, f(x)), derivative(f)) == forms[0]


def test_a_remembered_answer_that_fails_its_check_is_searched_again(monkeypatch, tmp_path):
    """The files are shared (a cluster's workers, other versions of symnet): a tampered or
    stale answer is checked at sample points, and a wrong one is searched anew, not used."""
    monkeypatch.setenv("SYMNET_CACHE_DIR", str(tmp_path))
    f = sn.sigmoid.function
    rewrite.output_derivative.cache_clear()
    right = rewrite.output_derivative(sp.Lambda(x, f(x)), derivative(f))
    assert right == sp.Lambda(x, x * (1 - x))
    (path,) = (tmp_path / "derivations").glob("output-form-*")
    text = path.read_text()
    assert '["Integer", "-1"]' in text
    path.write_text(text.replace('["Integer", "-1"]', '["Integer", "-3"]'))  # σ(1 − 3σ)
    rewrite.output_derivative.cache_clear()
    assert rewrite.output_derivative(sp.Lambda(x, f(x)), derivative(f)) == right
    assert '["Integer", "-3"]' not in path.read_text()  # and the file holds the answer again
    assert rewrite.agree(sp.tanh(x) ** 2, 1 - 1 / sp.cosh(x) ** 2)
    assert not rewrite.agree(x * (1 - 3 * x), x * (1 - x))
