"""Answers of slow symbolic searches, remembered across processes.

The search for an activation's output form (``rewrite.output_derivative``: σ′ → A∘(1 − A) by
solving y = σ(x)) takes 0.1–0.3 s of SymPy for sigmoid, softplus, swish or GELU, in every new
process, out of a warm setup of about 0.6 s. Its answer depends only on the question, so it is
kept in the cache directory (``codegen.files.cache_dir``, ``derivations/``): one file per
question, named by its hash, holding the question and the answer's ``srepr``, written
atomically. A file whose question differs, that does not parse, or that cannot be read is
ignored and the search runs; an answer whose ``srepr`` does not read back as itself (a
user-defined class) and an unwritable location are not remembered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import sympy as sp

from codegen.files import atomic_write, cache_dir

VERSION = "1"  # bump when a search changes what it answers
NONE = "None"


def remembered(kind: str, question: str, search: Callable[[], sp.Basic | None]):
    """The answer to ``question`` (text that determines it) from an earlier process, else
    ``search()``, kept for the next one."""
    asked = f"{kind} {VERSION}\n{question}\n"
    path = cache_dir() / "derivations" / f"{kind}-{hashlib.sha256(asked.encode()).hexdigest()[:32]}"
    try:
        stored = path.read_text(encoding="utf-8")
        if stored.startswith(asked):
            text = stored[len(asked):]
            return None if text == NONE else sp.sympify(text)
    except Exception:  # absent, unreadable or damaged: search again
        pass
    answer = search()
    text = NONE if answer is None else sp.srepr(answer)
    try:
        if answer is not None and sp.sympify(text) != answer:
            return answer  # not representable as text
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write((asked + text).encode("utf-8")))
    except Exception:  # an unwritable cache costs the next process the search, nothing else
        pass
    return answer
