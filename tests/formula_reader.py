"""Read symnet's printed formulas back — text, LaTeX and MathML — into one syntax tree, and
compute that tree with NumPy.

Independent of symnet's printers: a test can then check that every form groups each product
the same way (equal trees) and means what the model computes (equal numbers).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
from scipy.special import erf, expit

SUPERSCRIPTS = {"⁰": "0", "¹": "1", "²": "2", "³": "3", "⁴": "4", "⁵": "5", "⁶": "6", "⁷": "7",
                "⁸": "8", "⁹": "9", "⁻": "-", "ᵗ": "t"}
RELATIONS = {">", "<", "≥", "≤", "=", "≠"}
TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>\d+(?:\.\d+)?(?:e-?\d+)?)
  | (?P<name>[A-Za-zδσμπ∞][\u0302A-Za-z0-9_']*(?:\[[-0-9.e]+\](?=\s*[(@]))?)
  | (?P<sup>[⁰¹²³⁴⁵⁶⁷⁸⁹⁻ᵗ]+)
  | (?P<op>[-+−·∘/()\[\]|ᵀ^,√><≥≤=≠∧∨¬𝟙@])
""", re.VERBOSE)


def tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"cannot read {text[pos:pos + 20]!r} in {text!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind != "space":
            value = m.group()
            out.append((kind, "−" if value == "-" else value))
    return out


class Parser:
    """Precedence climbing over: sums (+ −) < products (· ∘ / and, with ``implicit``,
    juxtaposition) < unary minus < postfix (ᵀ, powers) < atoms. ``f(x)`` is a call in text;
    with ``implicit`` only ``f@(x)`` is, and ``W (x)`` a product."""

    def __init__(self, text: str, implicit: bool = False):
        self.toks = tokens(text)
        self.i = 0
        self.implicit = implicit

    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("end", "")

    def take(self, value=None):
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise ValueError(f"expected {value!r}, got {tok[1]!r} at token {self.i} of {self.toks}")
        self.i += 1
        return tok

    def parse(self):
        tree = self.condition()
        if self.peek()[0] != "end":
            raise ValueError(f"unread tokens {self.toks[self.i:]}")
        return tree

    def condition(self):
        first = self.sum()
        if self.peek()[1] not in RELATIONS:
            return first
        parts = [first]
        while self.peek()[1] in RELATIONS:
            parts += [self.take()[1], self.sum()]
        tree = ("rel", *parts)
        while self.peek()[1] in ("∧", "∨"):
            tree = (self.take()[1], tree, self.condition())
        return tree

    def sum(self):
        tree = self.product()
        while self.peek()[1] in ("+", "−"):
            op = self.take()[1]
            tree = ("+" if op == "+" else "−", tree, self.product())
        return tree

    def starts_atom(self):
        kind, value = self.peek()
        return kind in ("number", "name") or value in ("(", "𝟙", "[", "|", "√")

    def product(self):
        tree = self.unary()
        while True:
            value = self.peek()[1]
            if value in ("·", "∘", "/"):
                self.take()
                tree = (value, tree, self.unary())
            elif self.implicit and self.starts_atom() and not (
                    value == "|" and self.inside_bars):
                tree = ("·", tree, self.unary())
            else:
                return tree

    inside_bars = False

    def unary(self):
        if self.peek()[1] == "−":
            self.take()
            return ("neg", self.unary())
        if self.peek()[1] == "¬":
            self.take()
            return ("not", self.unary())
        return self.postfix()

    def postfix(self):
        tree = self.atom()
        while True:
            kind, value = self.peek()
            if value == "ᵀ":
                self.take()
                tree = ("T", tree)
            elif kind == "sup":
                self.take()
                exponent = "".join(SUPERSCRIPTS[c] for c in value)
                tree = ("^", tree, ("name", "t") if exponent == "t" else ("num", float(exponent)))
            elif value == "^":
                self.take()
                tree = ("^", tree, self.atom())
            else:
                return tree

    def atom(self):
        kind, value = self.take()
        if kind == "number":
            return ("num", float(value))
        if value == "𝟙":
            return ("ones",)
        if value == "(":
            tree = self.condition()
            self.take(")")
            return tree
        if value == "[":
            tree = self.condition()
            self.take("]")
            return ("iverson", tree)
        if value == "|":
            outer, self.inside_bars = self.inside_bars, True
            tree = self.sum()
            self.inside_bars = outer
            self.take("|")
            return ("abs", tree)
        if value == "√":
            return ("sqrt", self.postfix())
        if kind == "name":
            explicit = self.peek()[1] == "@"  # f@(x): a call written as one (LaTeX, MathML)
            if explicit:
                self.take("@")
            if explicit or (self.peek()[1] == "(" and not self.implicit):
                self.take("(")
                args = [self.condition()]
                while self.peek()[1] == ",":
                    self.take()
                    args.append(self.condition())
                self.take(")")
                return ("call", value, *args)
            return ("name", value)
        raise ValueError(f"unexpected {value!r} in {self.toks}")


def parse(text: str, implicit: bool = False):
    return fold(Parser(text, implicit).parse())


def _number(tree):
    if tree[0] == "num":
        return tree[1]
    if tree[0] == "neg" and tree[1][0] == "num":
        return -tree[1][1]
    return None


def fold(tree):
    """Numbers computed (5·10^(−5) and 5e-5 are one tree) and signs moved out of products:
    −Z²/2, −(Z²/2) and (−1/n)·Y versus −(1/n)·Y differ in sign convention, not in grouping."""
    if tree[0] == "num" and tree[1] < 0:
        return ("neg", ("num", -tree[1]))
    if tree[0] in ("num", "name", "ones"):
        return tree
    head, *rest = tree
    args = [fold(a) if isinstance(a, tuple) else a for a in rest]
    if head in ("·", "/", "^", "neg", "+", "−") and all(_number(a) is not None for a in args):
        values = [_number(a) for a in args]
        result = {"·": lambda a, b: a * b, "/": lambda a, b: a / b, "^": lambda a, b: a ** b,
                  "neg": lambda a: -a, "+": lambda a, b: a + b, "−": lambda a, b: a - b}[head]
        return fold(("num", float(result(*values))))
    if head in ("·", "∘", "/") and any(a[0] == "neg" for a in args):
        inner = tuple(a[1] if a[0] == "neg" else a for a in args)
        flips = sum(a[0] == "neg" for a in args)
        tree = fold((head, *inner))
        return ("neg", tree) if flips % 2 else tree
    if head == "neg" and args[0][0] == "neg":
        return args[0][1]
    return (head, *args)


# ------------------------------------------------------------------------------ LaTeX, MathML

LATEX_WORDS = {r"\circ": "∘", r"\cdot": "·", r"\sigma": "σ", r"\tanh": "tanh", r"\exp": "exp",
               r"\log": "log", r"\min": "min", r"\max": "max", r"\geq": "≥", r"\leq": "≤",
               r"\neq": "≠", r"\wedge": "∧", r"\vee": "∨", r"\neg": "¬", r"\pi": "π",
               r"\infty": "∞", r"\delta": "δ", r"\sin": "sin", r"\cos": "cos", r"\top": "⊤",
               r"\mu": "μ", r"\gamma": "gamma", r"\beta": "beta"}


LATEX_CALLS = {r"\sigma", r"\tanh", r"\exp", r"\log", r"\min", r"\max", r"\sin", r"\cos"}


def latex_to_text(tex: str) -> str:
    """LaTeX in symnet's notation → the text language (products by juxtaposition stay
    juxtaposed: parse with ``implicit=True``)."""
    pos = 0

    def group():
        nonlocal pos
        while tex[pos] == " ":
            pos += 1
        if tex[pos] != "{":
            ch = tex[pos]
            pos += 1
            return ch
        depth, start = 0, pos
        while True:
            depth += {"{": 1, "}": -1}.get(tex[pos], 0)
            pos += 1
            if depth == 0:
                return convert(tex[start + 1:pos - 1])

    def convert(s):
        nonlocal pos, tex
        saved = pos, tex
        tex, pos = s, 0
        out = []
        while pos < len(tex):
            ch = tex[pos]
            if tex.startswith(r"\left", pos) or tex.startswith(r"\right", pos):
                pos += 5 if tex.startswith(r"\left", pos) else 6
                out.append(" " + tex[pos] + " ")
                pos += 1
            elif tex.startswith(r"\frac", pos):
                pos += 5
                num = group()
                den = group()
                out.append(f" (({num})/({den})) ")
            elif tex.startswith(r"\sqrt", pos):
                pos += 5
                out.append(f" √({group()}) ")
            elif tex.startswith(r"\mathbf", pos):
                pos += 7
                assert group() == "1"
                out.append(" 𝟙 ")
            elif tex.startswith(r"\operatorname", pos):
                pos += 13
                out.append(" " + group().replace("\\_", "_").replace(" ", ""))
                if tex.startswith("_", pos):  # leaky_relu_{0.1}: a parameter, written leaky_relu[0.1]
                    pos += 1
                    out.append(f"[{group().strip()}]")
                out.append("@")
            elif tex.startswith(r"\hat", pos):  # \hat{X}_{1} → X̂1
                pos += 4
                out.append(" " + group().strip() + "\u0302")
            elif tex.startswith(r"\mathit", pos):
                pos += 7
                out.append(" " + group().replace("\\_", "_").replace(" ", ""))
            elif ch == "\\":
                m = re.match(r"\\[A-Za-z]+|\\.", tex[pos:])
                word = m.group()
                pos += len(word)
                if word == r"\_":
                    out.append("_")
                elif word in (r"\,", r"\ "):
                    out.append(" ")
                else:
                    name = tex.startswith("_", pos)  # \sigma_{1} is a name (σ1), \sigma( a call
                    out.append(" " + LATEX_WORDS.get(word, word[1:]) + (
                        "@" if not name and (word in LATEX_CALLS or word not in LATEX_WORDS)
                        else ""))
            elif ch == "_":
                pos += 1
                out.append(group().replace(" ", ""))  # W_{1} → W1: part of the name
            elif ch == "^":
                pos += 1
                exponent = group()
                out.append(" ᵀ " if exponent.strip() == "⊤" or exponent == r"\top"
                           else f" ^({exponent}) ")
            elif ch == "{":
                out.append(f" ({group()}) ")
            elif ch == "-":
                pos += 1
                out.append(" − ")
            else:
                pos += 1
                out.append(ch)
        result = "".join(out)
        pos, tex = saved
        return result

    return re.sub(r"\s+", " ", convert(tex)).strip()


MATHML_NAMES = {"γ": "gamma", "β": "beta"}  # a norm's gain and shift, gamma1 and beta1 in text
MATHML_OPS = {"\u2061": "@", "\u2062": " · ", "−": " − ", "-": " − "}


def mathml_to_text(markup: str) -> str:
    """Presentation MathML in symnet's notation → the text language."""
    markup = re.sub(r' xmlns="[^"]*"', "", markup)  # a whole <math> element: tags unqualified
    root = ET.fromstring(f"<root>{markup}</root>")

    def conv(el) -> str:
        tag = el.tag
        if tag in ("root", "mrow", "math", "mstyle"):
            return " ".join(conv(c) for c in el)
        if tag == "mi":
            return " " + MATHML_NAMES.get(el.text, el.text) + " "  # 𝟙 as itself
        if tag == "mover":  # X̂
            base, accent = list(el)
            return " " + conv(base).strip() + "\u0302 "
        if tag == "mn":
            return " " + el.text.replace("−", "-").replace("-", "−") + " "
        if tag == "mo":
            return MATHML_OPS.get(el.text, f" {el.text} ")
        if tag == "msub":
            base, sub = list(el)
            return " " + conv(base).strip() + conv(sub).strip() + " "
        if tag == "msup":
            base, exponent = list(el)
            if exponent.tag == "mi" and exponent.text == "⊤":
                return f" ({conv(base)})ᵀ "
            return f" ({conv(base)})^({conv(exponent)}) "
        if tag == "mfrac":
            num, den = list(el)
            return f" (({conv(num)})/({conv(den)})) "
        if tag == "msqrt":
            return f" √({' '.join(conv(c) for c in el)}) "
        raise ValueError(f"unexpected MathML element <{tag}>")

    return re.sub(r"\s+", " ", conv(root)).strip()


# ---------------------------------------------------------------------------------- numbers

class Ones:
    """𝟙 of a shape its neighbours give: 𝟙·b repeats the row b, T·𝟙 the column T."""


def _row_logsumexp(z):
    m = z.max(axis=1, keepdims=True)
    return m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))


BUILTINS = {
    "σ": expit, "tanh": np.tanh, "exp": np.exp, "log": np.log, "relu": lambda z: np.maximum(z, 0),
    "softplus": lambda z: np.logaddexp(0, z), "sign": np.sign, "erf": erf,
    "softmax": lambda z: np.exp(z - _row_logsumexp(z)), "log_softmax": lambda z: z - _row_logsumexp(z),
    "logsumexp": _row_logsumexp, "sum": lambda m: np.sum(m).reshape(1, 1),
    "colsum": lambda m: np.sum(m, axis=0, keepdims=True),
    "rowsum": lambda m: np.sum(m, axis=1, keepdims=True), "min": np.minimum, "max": np.maximum,
    "sinh": np.sinh, "cosh": np.cosh, "sin": np.sin, "cos": np.cos,
}
CONSTANTS = {"π": np.pi, "e": np.e}


def evaluate(tree, env: dict, functions: dict):
    """The value of a syntax tree: ``env`` gives every name (arrays, n), ``functions`` the
    activations beyond :data:`BUILTINS`."""

    def ev(t):
        head = t[0]
        if head == "num":
            return t[1]
        if head == "ones":
            return Ones()
        if head == "name":
            if t[1] in CONSTANTS and t[1] not in env:
                return CONSTANTS[t[1]]
            if t[1] not in env:
                raise KeyError(f"no value for {t[1]!r}")
            return env[t[1]]
        if head == "call":
            f = functions.get(t[1]) or BUILTINS[t[1]]
            return f(*[dense(ev(a)) for a in t[2:]])
        if head == "neg":
            return -dense(ev(t[1]))
        if head == "T":
            return dense(ev(t[1])).T
        if head == "sqrt":
            return np.sqrt(dense(ev(t[1])))
        if head == "abs":
            return np.abs(dense(ev(t[1])))
        if head == "iverson":
            return np.asarray(ev(t[1]), dtype=float)
        if head == "rel":
            values = [dense(ev(a)) if i % 2 == 0 else a for i, a in enumerate(t[1:])]
            result = True
            for k in range(0, len(values) - 2, 2):
                a, op, b = values[k:k + 3]
                result = result & {">": np.greater, "<": np.less, "≥": np.greater_equal,
                                   "≤": np.less_equal, "=": np.equal, "≠": np.not_equal}[op](a, b)
            return result
        if head in ("∧", "∨"):
            a, b = ev(t[1]), ev(t[2])
            return (a & b) if head == "∧" else (a | b)
        a, b = ev(t[1]), ev(t[2])
        if head == "·":
            if isinstance(a, Ones) or isinstance(b, Ones):  # a broadcast: the other one repeats
                return 1.0 if isinstance(a, Ones) and isinstance(b, Ones) else (
                    b if isinstance(a, Ones) else a)
            if np.ndim(a) == 2 and np.ndim(b) == 2:
                return a @ b
            return a * b
        if head == "^":
            return dense(a) ** dense(b)
        a, b = dense(a), dense(b)
        return {"∘": np.multiply, "/": np.divide, "+": np.add, "−": np.subtract}[head](a, b)

    def dense(v):
        return 1.0 if isinstance(v, Ones) else v

    with np.errstate(all="ignore"):
        return dense(ev(tree))
