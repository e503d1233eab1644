"""Answers of slow symbolic searches, remembered across processes.

The search for an activation's output form (``rewrite.output_derivative``: σ′ → A∘(1 − A) by
solving y = σ(x)) takes 0.1–0.3 s of SymPy for sigmoid, softplus, swish or GELU, in every new
process, out of a warm setup of about 0.6 s. Its answer depends only on the question, so it is
kept in the cache directory (``codegen.files.cache_dir``, ``derivations/``): one file per
question, named by its hash, holding the question and the answer in the model file's data-only
expression format (``serialize.encode``: reading it back runs no code), written atomically. A
file whose question differs, that does not decode, that cannot be read, or whose answer fails
its check (the files are shared, and a tampered or stale answer would train a wrong gradient)
is ignored and the search runs; an answer that does not decode as itself (a user-defined
activation's class) and an unwritable location are not remembered.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import sympy as sp

from codegen.files import atomic_write, cache_dir

from .serialize import decode, encode

VERSION = "2"  # bump when a search changes what it answers


def remembered(kind: str, question: str, search: Callable[[], sp.Basic | None],
               check: Callable[[sp.Basic], bool]):
    """The answer to ``question`` (text that determines it) from an earlier process if
    ``check(answer)`` accepts it, else ``search()``, kept for the next one."""
    asked = f"{kind} {VERSION}\n{question}\n"
    path = cache_dir() / "derivations" / f"{kind}-{hashlib.sha256(asked.encode()).hexdigest()[:32]}"
    try:
        stored = path.read_text(encoding="utf-8")
        if stored.startswith(asked):
            data = json.loads(stored[len(asked):])
            if data is None:
                return None
            answer = decode(data)
            if check(answer):
                return answer
    except Exception:  # absent, unreadable or damaged: search again
        pass
    answer = search()
    try:
        data = None if answer is None else encode(answer)
        if answer is not None and decode(data) != answer:
            return answer  # not representable in the data-only format
        text = json.dumps(data)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write((asked + text).encode("utf-8")))
    except Exception:  # an unwritable cache costs the next process the search, nothing else
        pass
    return answer
