"""Procedurally generated "textbook" Python for deepseek-coder-nano's training mix.

Real code (the standard library, the packages) teaches the model what Python looks like, but at
~20 M tokens an 8 M-parameter model does not learn from it how a function body follows from its
name and the variables around it: the earlier models filled `result = 0; for item in items: ___;
return result` with `result.append(item)`. Tiny models learn such structure from simple, varied,
consistent data (TinyStories did the same for English), so this module writes small modules of
plainly written functions and classes in which every statement follows from the names and
types around it: accumulators, filters, counters, predicates, recursion, string and file helpers,
container and record classes. Names, parameter names, conditions, styles (docstrings, type hints,
comprehensions or loops) are drawn at random, so what is learnt is the data flow, not a fixed
text.

    python3 scripts/nano_textbook.py [SEED]   # prints one generated module
    python3 scripts/nano_textbook.py --check  # parses the training script's whole generated corpus

Our own text, generated on every machine: no license beyond the project's.
"""
import random
import sys

# (plural, singular) names for iterables of numbers and of strings.
NUMBERS = [("numbers", "number"), ("values", "value"), ("scores", "score"), ("prices", "price"), ("nums", "num"),
           ("amounts", "amount"), ("sizes", "size"), ("weights", "weight"), ("ages", "age"), ("counts", "count"),
           ("xs", "x"), ("items", "item"), ("totals", "total"), ("points", "point"), ("temperatures", "temperature"),
           ("lengths", "length"), ("ratings", "rating"), ("costs", "cost"), ("data", "x"), ("samples", "sample")]
STRINGS = [("words", "word"), ("names", "name"), ("lines", "line"), ("strings", "s"), ("tokens", "token"),
           ("labels", "label"), ("titles", "title"), ("items", "item"), ("keys", "key"), ("paths", "path"),
           ("tags", "tag"), ("emails", "email"), ("cities", "city"), ("colors", "color"), ("parts", "part")]
NUM_CONDS = [("{x} > 0", "positive"), ("{x} < 0", "negative"), ("{x} % 2 == 0", "even"), ("{x} % 2 == 1", "odd"),
             ("{x} > {t}", "above"), ("{x} < {t}", "below"), ("{x} >= {t}", "at_least"), ("{x} != 0", "nonzero")]
STR_CONDS = [("{x}.startswith({c})", "starting_with"), ("{x}.endswith({c})", "ending_with"), ("len({x}) > {n}", "long"),
             ("{x}.isupper()", "upper"), ("{x}.isdigit()", "numeric"), ("{x}", "nonempty"), ("{c} in {x}", "containing")]
NUM_MAPS = [("{x} * 2", "doubled"), ("{x} * {x}", "squared"), ("{x} + 1", "incremented"), ("abs({x})", "absolute"),
            ("-{x}", "negated"), ("{x} * {f}", "scaled"), ("{x} // 2", "halved"), ("round({x})", "rounded")]
STR_MAPS = [("{x}.upper()", "upper"), ("{x}.lower()", "lower"), ("{x}.strip()", "stripped"), ("len({x})", "lengths"),
            ("{x}[::-1]", "reversed"), ("{x}.title()", "titled"), ("{x}[0]", "initials"), ("{x} + {c}", "suffixed")]


class Writer:
    def __init__(self, rng):
        self.rng = rng
        self.lines = []
        self.doc = rng.random() < 0.5
        self.hints = rng.random() < 0.4

    def add(self, indent, text=""):
        self.lines.append(("    " * indent + text) if text else "")

    def docstring(self, indent, text):
        if self.doc:
            self.add(indent, f'"""{text[0].upper()}{text[1:]}."""')

    def signature(self, name, params, types, ret):
        if self.hints:
            args = ", ".join(f"{p}: {t}" for p, t in zip(params, types))
            self.add(0, f"def {name}({args}) -> {ret}:")
        else:
            self.add(0, f"def {name}({', '.join(params)}):")


def quote(rng, s):
    return f"'{s}'" if rng.random() < 0.6 else f'"{s}"'


def num_cond(rng, x):
    cond, word = rng.choice(NUM_CONDS)
    t = rng.choice([0, 1, 2, 5, 10, 18, 50, 100, "threshold", "limit"])
    return cond.format(x=x, t=t), word, t if isinstance(t, str) and "{t}" in cond else None


def str_cond(rng, x):
    cond, word = rng.choice(STR_CONDS)
    c = quote(rng, rng.choice(["a", "#", "_", "test", "x", "-", ".py", "error", "@"]))
    return cond.format(x=x, c=c, n=rng.choice([3, 5, 8, 10])), word


def accumulate(w):
    """sum / product / count / max / min / mean of an iterable, optionally filtered."""
    rng = w.rng
    plural, x = rng.choice(NUMBERS)
    kind = rng.choice(["sum", "product", "count", "max", "min", "mean"])
    acc = {"sum": ["total", "result", "s", "acc"], "product": ["product", "result", "p"], "count": ["count", "n", "result"],
           "max": ["largest", "best", "biggest", "result"], "min": ["smallest", "lowest", "result"],
           "mean": ["total"]}[kind]
    acc = rng.choice([a for a in acc if a != x] or ["result"])
    # Filtered only where the filter keeps the result right (a max seeded from the first element
    # or a mean over all of them would not be).
    filtered = kind in ("sum", "product", "count") and rng.random() < 0.5
    cond, cword, extra = num_cond(rng, x) if filtered else (None, None, None)
    name = {"sum": ["sum_{p}", "total_{p}", "add_up"], "product": ["product_of_{p}", "multiply_all"],
            "count": ["count_{c}", "count_{p}"], "max": ["max_{s}", "largest_{s}", "find_max"],
            "min": ["min_{s}", "smallest_{s}", "find_min"], "mean": ["mean_{s}", "average_{s}", "average"]}[kind]
    name = rng.choice(name).format(p=plural if plural != "xs" else "values", s=x if x != "x" else "value", c=cword or plural)
    if cword and kind == "sum":
        name = f"sum_{cword}"
    params = [plural] + ([extra] if extra else [])
    w.signature(name, params, ["list"] + (["int"] * bool(extra)), "float" if kind == "mean" else "int")
    what = {"sum": "the sum of", "product": "the product of", "count": "how many are", "max": "the largest of",
            "min": "the smallest of", "mean": "the mean of"}[kind]
    w.docstring(1, f"return {what} the {plural}" + (f" that are {cword.replace('_', ' ')}" if cword else ""))
    if kind in ("sum", "count", "mean") and not cond and rng.random() < 0.3:
        w.add(1, {"sum": f"return sum({plural})", "count": f"return len({plural})",
                  "mean": f"return sum({plural}) / len({plural})"}[kind])
        return
    if kind in ("max", "min"):
        w.add(1, f"if not {plural}:")
        w.add(2, rng.choice(["return None", f"raise ValueError({quote(rng, 'empty sequence')})"]))
        w.add(1, f"{acc} = {plural}[0]")
    elif kind == "mean":
        w.add(1, f"if not {plural}:")
        w.add(2, "return 0.0")
        w.add(1, f"{acc} = 0")
    else:
        w.add(1, f"{acc} = {1 if kind == 'product' else 0}")
    w.add(1, f"for {x} in {plural}:")
    ind = 2
    if cond:
        w.add(2, f"if {cond}:")
        ind = 3
    if kind == "sum" or kind == "mean":
        w.add(ind, rng.choice([f"{acc} += {x}", f"{acc} = {acc} + {x}"]))
    elif kind == "product":
        w.add(ind, rng.choice([f"{acc} *= {x}", f"{acc} = {acc} * {x}"]))
    elif kind == "count":
        w.add(ind, f"{acc} += 1")
    elif kind == "max":
        w.add(ind, f"if {x} > {acc}:")
        w.add(ind + 1, f"{acc} = {x}")
    else:
        w.add(ind, f"if {x} < {acc}:")
        w.add(ind + 1, f"{acc} = {x}")
    w.add(1, f"return {acc} / len({plural})" if kind == "mean" else f"return {acc}")


def build_list(w):
    """filter and/or map into a new list: a loop with append, or a comprehension."""
    rng = w.rng
    plural, x = rng.choice(NUMBERS if rng.random() < 0.5 else STRINGS)
    numeric = (plural, x) in NUMBERS
    cond, cword = (num_cond(rng, x)[:2] if numeric else str_cond(rng, x)) if rng.random() < 0.7 else (None, None)
    if "threshold" in (cond or "") or "limit" in (cond or ""):
        cond, cword = f"{x} > 0", "positive"
    mapped, mword = rng.choice(NUM_MAPS if numeric else STR_MAPS) if (rng.random() < 0.5 or not cond) else (x, None)
    mapped = mapped.format(x=x, f=rng.choice([2, 3, 10, "factor"]), c=quote(rng, rng.choice(["!", "_new", ".txt"])))
    if "factor" in mapped:
        mapped = f"{x} * 3"
    name = "_".join(p for p in [mword, cword] if p) + "_" + plural if (mword or cword) else f"copy_{plural}"
    name = rng.choice([name, f"get_{name}", f"filter_{plural}" if cword and not mword else name])
    w.signature(name, [plural], ["list"], "list")
    w.docstring(1, f"return a new list of the {plural}" + (f" that are {cword.replace('_', ' ')}" if cword else "")
                + (f", {mword}" if mword else ""))
    out = rng.choice(["result", "out", "selected", mword or "kept", "new_" + plural])
    if rng.random() < 0.35:
        w.add(1, f"return [{mapped} for {x} in {plural}" + (f" if {cond}]" if cond else "]"))
        return
    w.add(1, f"{out} = []")
    w.add(1, f"for {x} in {plural}:")
    if cond:
        w.add(2, f"if {cond}:")
        w.add(3, f"{out}.append({mapped})")
    else:
        w.add(2, f"{out}.append({mapped})")
    w.add(1, f"return {out}")


def dict_count(w):
    """counting, grouping, and indexing with a dict."""
    rng = w.rng
    plural, x = rng.choice(STRINGS)
    kind = rng.choice(["count", "count", "group", "index", "invert"])
    d = {"count": rng.choice(["counts", "freq", "tally", "histogram"]), "group": rng.choice(["groups", "by_key", "buckets"]),
         "index": rng.choice(["index", "lookup", "positions"]), "invert": rng.choice(["inverted", "reverse", "result"])}[kind]
    if kind == "count":
        source = rng.choice([plural, "text.split()"])
        arg = "text" if source == "text.split()" else plural
        x = "word" if arg == "text" else x
        w.signature(rng.choice([f"count_{plural}" if arg != "text" else "count_words", "word_frequencies" if arg == "text" else f"tally_{plural}"]),
                    [arg], ["str" if arg == "text" else "list"], "dict")
        w.docstring(1, f"return a dict mapping each {x} to how many times it occurs")
        w.add(1, f"{d} = {{}}")
        w.add(1, f"for {x} in {source}:")
        style = rng.randrange(3)
        if style == 0:
            w.add(2, f"{d}[{x}] = {d}.get({x}, 0) + 1")
        elif style == 1:
            w.add(2, f"if {x} in {d}:")
            w.add(3, f"{d}[{x}] += 1")
            w.add(2, "else:")
            w.add(3, f"{d}[{x}] = 1")
        else:
            w.add(2, f"if {x} not in {d}:")
            w.add(3, f"{d}[{x}] = 0")
            w.add(2, f"{d}[{x}] += 1")
    elif kind == "group":
        key, kname = rng.choice([(f"len({x})", "length"), (f"{x}[0]", "first_letter"), (f"{x}.lower()", "lowercase")])
        w.signature(f"group_by_{kname}", [plural], ["list"], "dict")
        w.docstring(1, f"group the {plural} by their {kname.replace('_', ' ')}")
        w.add(1, f"{d} = {{}}")
        w.add(1, f"for {x} in {plural}:")
        if rng.random() < 0.5:
            w.add(2, f"{d}.setdefault({key}, []).append({x})")
        else:
            w.add(2, f"key = {key}")
            w.add(2, f"if key not in {d}:")
            w.add(3, f"{d}[key] = []")
            w.add(2, f"{d}[key].append({x})")
    elif kind == "index":
        w.signature(f"index_{plural}", [plural], ["list"], "dict")
        w.docstring(1, f"map each {x} to its position in the list")
        if rng.random() < 0.3:
            w.add(1, f"return {{{x}: i for i, {x} in enumerate({plural})}}")
            return
        w.add(1, f"{d} = {{}}")
        w.add(1, f"for i, {x} in enumerate({plural}):")
        w.add(2, f"{d}[{x}] = i")
    else:
        m = rng.choice(["mapping", "table", "pairs"])
        w.signature(f"invert_{m}", [m], ["dict"], "dict")
        w.docstring(1, f"swap the keys and values of {m}")
        w.add(1, f"{d} = {{}}")
        w.add(1, f"for key, value in {m}.items():")
        w.add(2, f"{d}[value] = key")
    w.add(1, f"return {d}")


BINARY = [("add", "+", "the sum of"), ("subtract", "-", "the difference of"), ("sub", "-", "the difference of"),
          ("multiply", "*", "the product of"), ("mul", "*", "the product of"), ("divide", "/", "the quotient of"),
          ("power", "**", "the power of"), ("modulo", "%", "the remainder of"), ("floor_divide", "//", "the floor quotient of"),
          ("plus", "+", "the sum of"), ("times", "*", "the product of"), ("minus", "-", "the difference of")]
PAIRS = [("a", "b"), ("x", "y"), ("m", "n"), ("first", "second"), ("left", "right"), ("p", "q"), ("u", "v")]


def arithmetic(w):
    """one-line numeric functions over two arguments, or small formulas."""
    rng = w.rng
    a, b = rng.choice(PAIRS)
    kind = rng.random()
    if kind < 0.55:
        name, op, what = rng.choice(BINARY)
        w.signature(name, [a, b], ["int", "int"], "int")
        w.docstring(1, f"return {what} {a} and {b}")
        if op == "/" and rng.random() < 0.5:
            w.add(1, f"if {b} == 0:")
            w.add(2, f"raise ZeroDivisionError({quote(rng, 'division by zero')})")
        w.add(1, f"return {a} {op} {b}")
    elif kind < 0.8:
        name, body = rng.choice([("maximum", f"{a} if {a} > {b} else {b}"), ("minimum", f"{a} if {a} < {b} else {b}"),
                                 ("average", f"({a} + {b}) / 2"), ("midpoint", f"({a} + {b}) / 2"),
                                 ("distance", f"abs({a} - {b})"), ("hypotenuse", f"({a} ** 2 + {b} ** 2) ** 0.5"),
                                 ("is_divisible", f"{a} % {b} == 0"), ("same_sign", f"({a} >= 0) == ({b} >= 0)")])
        w.signature(name, [a, b], ["float", "float"], "bool" if "==" in body else "float")
        w.docstring(1, f"return the {name.replace('_', ' ')} of {a} and {b}")
        if name in ("maximum", "minimum") and rng.random() < 0.5:
            w.add(1, f"if {a} {'>' if name == 'maximum' else '<'} {b}:")
            w.add(2, f"return {a}")
            w.add(1, f"return {b}")
        else:
            w.add(1, f"return {body}")
    else:
        x = rng.choice(["x", "n", "value", "number"])
        name, body = rng.choice([("square", f"{x} * {x}"), ("cube", f"{x} ** 3"), ("double", f"{x} * 2"),
                                 ("half", f"{x} / 2"), ("increment", f"{x} + 1"), ("decrement", f"{x} - 1"),
                                 ("negate", f"-{x}"), ("celsius_to_fahrenheit", f"{x} * 9 / 5 + 32"),
                                 ("fahrenheit_to_celsius", f"({x} - 32) * 5 / 9"), ("reciprocal", f"1 / {x}")])
        w.signature(name, [x], ["float"], "float")
        w.docstring(1, f"return the {name.replace('_', ' ')} of {x}")
        w.add(1, f"return {body}")


def predicate(w):
    rng = w.rng
    n = rng.choice(["n", "x", "number", "value", "num"])
    s = rng.choice(["s", "text", "word", "string"])
    choice = rng.randrange(9)
    if choice == 0:
        name, body = rng.choice([("is_even", f"{n} % 2 == 0"), ("is_odd", f"{n} % 2 == 1"), ("is_odd", f"{n} % 2 != 0"),
                                 ("is_positive", f"{n} > 0"), ("is_negative", f"{n} < 0"), ("is_zero", f"{n} == 0"),
                                 ("is_adult", f"{n} >= 18"), ("is_leap_year", f"{n} % 4 == 0 and ({n} % 100 != 0 or {n} % 400 == 0)")])
        w.signature(name, [n], ["int"], "bool")
        w.docstring(1, f"return True if {n} is {name[3:].replace('_', ' ')}")
        w.add(1, f"return {body}")
    elif choice == 1:
        name, body = rng.choice([("is_palindrome", f"{s} == {s}[::-1]"), ("is_empty", f"len({s}) == 0"),
                                 ("is_blank", f"not {s}.strip()"), ("is_capitalized", f"{s}[:1].isupper()"),
                                 ("has_digits", f"any(c.isdigit() for c in {s})"), ("is_lowercase", f"{s} == {s}.lower()")])
        w.signature(name, [s], ["str"], "bool")
        w.docstring(1, f"return True if {s} is {name[3:].replace('_', ' ')}" if name.startswith("is_") else f"return True if {s} has digits")
        w.add(1, f"return {body}")
    elif choice == 2:
        plural, x = rng.choice(NUMBERS + STRINGS)
        target = rng.choice(["target", "needle", "wanted", "value"])
        w.signature(rng.choice(["contains", "includes", f"has_{x}"]), [plural, target], ["list", "object"], "bool")
        w.docstring(1, f"return True if {target} is one of the {plural}")
        if rng.random() < 0.4:
            w.add(1, f"return {target} in {plural}")
            return
        w.add(1, f"for {x} in {plural}:")
        w.add(2, f"if {x} == {target}:")
        w.add(3, "return True")
        w.add(1, "return False")
    elif choice == 3:
        plural, x = rng.choice(NUMBERS)
        kind = rng.choice(["all", "any"])
        cond, cword, extra = num_cond(rng, x)
        if extra:
            cond, cword = f"{x} > 0", "positive"
        w.signature(f"{'all' if kind == 'all' else 'any'}_{cword}", [plural], ["list"], "bool")
        w.docstring(1, f"return True if {kind} of the {plural} are {cword.replace('_', ' ')}")
        if rng.random() < 0.4:
            w.add(1, f"return {kind}({cond} for {x} in {plural})")
            return
        w.add(1, f"for {x} in {plural}:")
        if kind == "all":
            neg = cond.replace(" >= ", " < ") if " >= " in cond else f"not {cond}" if " " not in cond or "%" in cond else cond.replace(" > ", " <= ").replace(" < ", " >= ").replace(" != ", " == ").replace(" == ", " != ")
            w.add(2, f"if {neg}:")
            w.add(3, "return False")
            w.add(1, "return True")
        else:
            w.add(2, f"if {cond}:")
            w.add(3, "return True")
            w.add(1, "return False")
    elif choice == 4:
        w.signature("is_prime", [n], ["int"], "bool")
        w.docstring(1, f"return True if {n} is a prime number")
        w.add(1, f"if {n} < 2:")
        w.add(2, "return False")
        i = rng.choice(["i", "d", "k"])
        w.add(1, f"for {i} in range(2, int({n} ** 0.5) + 1):" if rng.random() < 0.6 else f"for {i} in range(2, {n}):")
        w.add(2, f"if {n} % {i} == 0:")
        w.add(3, "return False")
        w.add(1, "return True")
    elif choice == 5:
        w.signature("count_vowels", [s], ["str"], "int")
        w.docstring(1, f"return the number of vowels in {s}")
        if rng.random() < 0.4:
            w.add(1, f"return sum(1 for c in {s}.lower() if c in {quote(rng, 'aeiou')})")
            return
        c = rng.choice(["count", "n", "total"])
        w.add(1, f"{c} = 0")
        w.add(1, f"for ch in {s}.lower():")
        w.add(2, f"if ch in {quote(rng, 'aeiou')}:")
        w.add(3, f"{c} += 1")
        w.add(1, f"return {c}")
    elif choice == 6:
        lo, hi = rng.choice([("low", "high"), ("lo", "hi"), ("minimum", "maximum"), ("smallest", "largest")])
        w.signature("clamp", [n, lo, hi], ["float"] * 3, "float")
        w.docstring(1, f"limit {n} to the range from {lo} to {hi}")
        if rng.random() < 0.4:
            w.add(1, f"return max({lo}, min({n}, {hi}))")
            return
        w.add(1, f"if {n} < {lo}:")
        w.add(2, f"return {lo}")
        w.add(1, f"if {n} > {hi}:")
        w.add(2, f"return {hi}")
        w.add(1, f"return {n}")
    elif choice == 7:
        w.signature("sign", [n], ["float"], "int")
        w.docstring(1, f"return 1, -1 or 0 for the sign of {n}")
        w.add(1, f"if {n} > 0:")
        w.add(2, "return 1")
        w.add(1, f"elif {n} < 0:")
        w.add(2, "return -1")
        w.add(1, "else:" if rng.random() < 0.5 else "")
        if w.lines[-1]:
            w.add(2, "return 0")
        else:
            w.lines.pop()
            w.add(1, "return 0")
    else:
        name, grades = "grade", [(90, "A"), (80, "B"), (70, "C"), (60, "D")]
        w.signature(name, [rng.choice(["score", "mark", "points"])], ["int"], "str")
        v = w.lines[-1].split("(")[1].split(")")[0].split(":")[0]
        w.docstring(1, f"return the letter grade for {v}")
        for k, (limit, letter) in enumerate(grades):
            w.add(1, f"{'if' if k == 0 else 'elif'} {v} >= {limit}:")
            w.add(2, f"return {quote(rng, letter)}")
        w.add(1, f"return {quote(rng, 'F')}")


def recursion(w):
    rng = w.rng
    n = rng.choice(["n", "k", "num"])
    kind = rng.randrange(7)
    if kind == 0:
        w.signature("factorial", [n], ["int"], "int")
        w.docstring(1, f"return {n}!")
        if rng.random() < 0.5:
            w.add(1, f"if {n} {rng.choice(['== 0', '<= 1', '< 2'])}:")
            w.add(2, "return 1")
            w.add(1, f"return {n} * factorial({n} - 1)")
        else:
            r, i = rng.choice([("result", "i"), ("product", "k"), ("acc", "i")])
            w.add(1, f"{r} = 1")
            w.add(1, f"for {i} in range(2, {n} + 1):")
            w.add(2, f"{r} *= {i}")
            w.add(1, f"return {r}")
    elif kind == 1:
        name = rng.choice(["fibonacci", "fib"])
        w.signature(name, [n], ["int"], "int")
        w.docstring(1, f"return the {n}-th Fibonacci number")
        if rng.random() < 0.5:
            w.add(1, f"if {n} < 2:")
            w.add(2, f"return {n}")
            w.add(1, f"return {name}({n} - 1) + {name}({n} - 2)")
        else:
            w.add(1, "a, b = 0, 1")
            w.add(1, f"for _ in range({n}):")
            w.add(2, "a, b = b, a + b")
            w.add(1, "return a")
    elif kind == 2:
        a, b = rng.choice([("a", "b"), ("x", "y"), ("m", "n")])
        w.signature("gcd", [a, b], ["int", "int"], "int")
        w.docstring(1, f"return the greatest common divisor of {a} and {b}")
        if rng.random() < 0.5:
            w.add(1, f"while {b}:")
            w.add(2, f"{a}, {b} = {b}, {a} % {b}")
            w.add(1, f"return {a}")
        else:
            w.add(1, f"if {b} == 0:")
            w.add(2, f"return {a}")
            w.add(1, f"return gcd({b}, {a} % {b})")
    elif kind == 3:
        w.signature("sum_digits", [n], ["int"], "int")
        w.docstring(1, f"return the sum of the decimal digits of {n}")
        t = rng.choice(["total", "result", "s"])
        w.add(1, f"{t} = 0")
        w.add(1, f"while {n} > 0:")
        w.add(2, f"{t} += {n} % 10")
        w.add(2, f"{n} //= 10")
        w.add(1, f"return {t}")
    elif kind == 4:
        base, exp = rng.choice([("base", "exp"), ("x", "n"), ("base", "exponent")])
        w.signature("power", [base, exp], ["float", "int"], "float")
        w.docstring(1, f"return {base} raised to {exp}")
        w.add(1, f"if {exp} == 0:")
        w.add(2, "return 1")
        w.add(1, f"return {base} * power({base}, {exp} - 1)")
    elif kind == 5:
        plural, x = rng.choice(NUMBERS + STRINGS)
        target = rng.choice(["target", "wanted", "value"])
        w.signature(rng.choice(["find_index", "index_of", "linear_search"]), [plural, target], ["list", "object"], "int")
        w.docstring(1, f"return the index of {target} in {plural}, or -1")
        w.add(1, f"for i, {x} in enumerate({plural}):")
        w.add(2, f"if {x} == {target}:")
        w.add(3, "return i")
        w.add(1, "return -1")
    else:
        plural = rng.choice(["items", "values", "numbers", "arr"])
        target = rng.choice(["target", "key", "value"])
        w.signature("binary_search", [plural, target], ["list", "int"], "int")
        w.docstring(1, f"return the index of {target} in the sorted {plural}, or -1")
        lo, hi = rng.choice([("lo", "hi"), ("low", "high"), ("left", "right")])
        w.add(1, f"{lo}, {hi} = 0, len({plural}) - 1")
        w.add(1, f"while {lo} <= {hi}:")
        w.add(2, f"mid = ({lo} + {hi}) // 2")
        w.add(2, f"if {plural}[mid] == {target}:")
        w.add(3, "return mid")
        w.add(2, f"elif {plural}[mid] < {target}:")
        w.add(3, f"{lo} = mid + 1")
        w.add(2, "else:")
        w.add(3, f"{hi} = mid - 1")
        w.add(1, "return -1")


def strings(w):
    rng = w.rng
    s = rng.choice(["s", "text", "string", "sentence"])
    kind = rng.randrange(7)
    if kind == 0:
        w.signature(rng.choice(["reverse", "reverse_string"]), [s], ["str"], "str")
        w.docstring(1, f"return {s} reversed")
        w.add(1, f"return {s}[::-1]" if rng.random() < 0.6 else f"return ''.join(reversed({s}))")
    elif kind == 1:
        w.signature(rng.choice(["capitalize_words", "title_case"]), [s], ["str"], "str")
        w.docstring(1, f"capitalize every word of {s}")
        w.add(1, f"return ' '.join(word.capitalize() for word in {s}.split())")
    elif kind == 2:
        words, sep = rng.choice([("words", "sep"), ("parts", "separator"), ("names", "delimiter")])
        w.signature(f"join_{words}", [words, sep], ["list", "str"], "str")
        w.docstring(1, f"join the {words} with {sep}")
        w.add(1, f"return {sep}.join({words})")
    elif kind == 3:
        w.signature(rng.choice(["word_count", "count_words"]), [s], ["str"], "int")
        w.docstring(1, f"return the number of words in {s}")
        w.add(1, f"return len({s}.split())")
    elif kind == 4:
        w.signature(rng.choice(["first_word", "last_word"]), [s], ["str"], "str")
        which = "0" if w.lines[-1].startswith("def first") else "-1"
        w.docstring(1, f"return the {'first' if which == '0' else 'last'} word of {s}")
        w.add(1, f"words = {s}.split()")
        w.add(1, "if not words:")
        w.add(2, "return ''")
        w.add(1, f"return words[{which}]")
    elif kind == 5:
        ch = rng.choice(["char", "c", "letter"])
        w.signature("count_char", [s, ch], ["str", "str"], "int")
        w.docstring(1, f"return how many times {ch} occurs in {s}")
        if rng.random() < 0.5:
            w.add(1, f"return {s}.count({ch})")
            return
        w.add(1, "count = 0")
        w.add(1, f"for c in {s}:" if ch != "c" else f"for x in {s}:")
        w.add(2, f"if {'c' if ch != 'c' else 'x'} == {ch}:")
        w.add(3, "count += 1")
        w.add(1, "return count")
    else:
        name = rng.choice(["greet", "hello", "make_greeting"])
        p = rng.choice(["name", "user", "person"])
        w.signature(name, [p], ["str"], "str")
        w.docstring(1, f"return a greeting for {p}")
        w.add(1, rng.choice([f"return f'Hello, {{{p}}}!'", f"return 'Hello, ' + {p} + '!'", f"return 'Hello, {{}}!'.format({p})"]))


def files(w):
    rng = w.rng
    path = rng.choice(["path", "filename", "file_path", "fname"])
    f = rng.choice(["f", "fh", "file"])
    kind = rng.randrange(5)
    enc = rng.choice(["", ", encoding='utf-8'"])
    if kind == 0:
        w.signature(rng.choice(["read_file", "read_text", "load_text"]), [path], ["str"], "str")
        w.docstring(1, f"return the contents of the file at {path}")
        w.add(1, f"with open({path}{enc}) as {f}:")
        if rng.random() < 0.5:
            w.add(2, f"return {f}.read()")
        else:
            d = rng.choice(["data", "text", "content"])
            w.add(2, f"{d} = {f}.read()")
            w.add(1, f"return {d}")
    elif kind == 1:
        w.signature(rng.choice(["read_lines", "load_lines"]), [path], ["str"], "list")
        w.docstring(1, f"return the lines of the file at {path}, without newlines")
        w.add(1, f"with open({path}{enc}) as {f}:")
        w.add(2, rng.choice([f"return [line.rstrip('\\n') for line in {f}]", f"return {f}.read().splitlines()"]))
    elif kind == 2:
        t = rng.choice(["text", "data", "content"])
        w.signature(rng.choice(["write_file", "save_text"]), [path, t], ["str", "str"], "None")
        w.docstring(1, f"write {t} to the file at {path}")
        w.add(1, f"with open({path}, 'w'{enc}) as {f}:")
        w.add(2, f"{f}.write({t})")
    elif kind == 3:
        w.signature("count_lines", [path], ["str"], "int")
        w.docstring(1, f"return the number of lines in the file at {path}")
        w.add(1, f"with open({path}{enc}) as {f}:")
        w.add(2, f"return sum(1 for _ in {f})" if rng.random() < 0.5 else f"return len({f}.readlines())")
    else:
        w.signature(rng.choice(["load_json", "read_json"]), [path], ["str"], "dict")
        w.docstring(1, f"return the JSON document in the file at {path}")
        w.add(1, f"with open({path}{enc}) as {f}:")
        w.add(2, f"return json.load({f})")


CONTAINERS = [("Stack", "items"), ("Queue", "items"), ("Bag", "things"), ("Inventory", "products"), ("Playlist", "songs"),
              ("ShoppingCart", "items"), ("Library", "books"), ("TodoList", "tasks"), ("History", "entries"),
              ("Team", "members"), ("Deck", "cards"), ("Basket", "fruits"), ("Buffer", "data"), ("Registry", "entries")]
RECORDS = [("Point", ["x", "y"]), ("Rectangle", ["width", "height"]), ("Circle", ["radius"]), ("Person", ["name", "age"]),
           ("BankAccount", ["owner", "balance"]), ("Counter", ["count"]), ("Temperature", ["celsius"]),
           ("Vector", ["x", "y"]), ("Book", ["title", "author"]), ("Employee", ["name", "salary"])]


def container_class(w):
    rng = w.rng
    cls, attr = rng.choice(CONTAINERS)
    x = {"items": "item", "things": "thing", "products": "product", "songs": "song", "books": "book", "tasks": "task",
         "entries": "entry", "members": "member", "cards": "card", "fruits": "fruit", "data": "value"}[attr]
    w.add(0, f"class {cls}:")
    w.docstring(1, f"a {cls.lower()} of {attr}")
    w.add(1, "def __init__(self):")
    w.add(2, f"self.{attr} = []")
    pop_end = "" if cls != "Queue" else "0"
    methods = ["push" if cls == "Stack" else "enqueue" if cls == "Queue" else rng.choice(["add", "append", f"add_{x}"])]
    methods += rng.sample(["pop", "peek", "size", "is_empty", "clear", "contains", "remove", "__len__", "__iter__", "count"],
                          rng.randint(2, 5))
    for m in methods:
        w.add(0)
        if m in ("push", "enqueue", "add", "append", f"add_{x}"):
            w.add(1, f"def {m}(self, {x}):")
            w.add(2, f"self.{attr}.append({x})")
        elif m == "pop":
            w.add(1, f"def {'dequeue' if cls == 'Queue' else 'pop'}(self):")
            if rng.random() < 0.4:
                w.add(2, f"if not self.{attr}:")
                w.add(3, f"raise IndexError({quote(rng, f'pop from an empty {cls.lower()}')})")
            w.add(2, f"return self.{attr}.pop({pop_end})")
        elif m == "peek":
            w.add(1, "def peek(self):")
            w.add(2, f"return self.{attr}[{'0' if cls == 'Queue' else '-1'}]")
        elif m in ("size", "__len__"):
            w.add(1, f"def {m}(self):")
            w.add(2, f"return len(self.{attr})")
        elif m == "is_empty":
            w.add(1, "def is_empty(self):")
            w.add(2, rng.choice([f"return len(self.{attr}) == 0", f"return not self.{attr}"]))
        elif m == "clear":
            w.add(1, "def clear(self):")
            w.add(2, rng.choice([f"self.{attr}.clear()", f"self.{attr} = []"]))
        elif m == "contains":
            w.add(1, f"def contains(self, {x}):")
            w.add(2, f"return {x} in self.{attr}")
        elif m == "remove":
            w.add(1, f"def remove(self, {x}):")
            w.add(2, f"self.{attr}.remove({x})")
        elif m == "__iter__":
            w.add(1, "def __iter__(self):")
            w.add(2, f"return iter(self.{attr})")
        else:
            w.add(1, f"def count(self, {x}):")
            w.add(2, f"return self.{attr}.count({x})")


def record_class(w):
    rng = w.rng
    cls, fields = rng.choice(RECORDS)
    w.add(0, f"class {cls}:")
    w.docstring(1, f"a {cls.lower()} with {' and '.join(fields)}")
    w.add(1, f"def __init__(self, {', '.join(fields)}):")
    for f in fields:
        w.add(2, f"self.{f} = {f}")
    methods = {"Point": [("distance_to", ["other"], "((self.x - other.x) ** 2 + (self.y - other.y) ** 2) ** 0.5"),
                         ("translate", ["dx", "dy"], "Point(self.x + dx, self.y + dy)")],
               "Vector": [("length", [], "(self.x ** 2 + self.y ** 2) ** 0.5"), ("add", ["other"], "Vector(self.x + other.x, self.y + other.y)"),
                          ("dot", ["other"], "self.x * other.x + self.y * other.y")],
               "Rectangle": [("area", [], "self.width * self.height"), ("perimeter", [], "2 * (self.width + self.height)"),
                             ("is_square", [], "self.width == self.height")],
               "Circle": [("area", [], "math.pi * self.radius ** 2"), ("circumference", [], "2 * math.pi * self.radius"),
                          ("diameter", [], "2 * self.radius")],
               "Person": [("greet", [], "f'Hello, my name is {self.name}'"), ("is_adult", [], "self.age >= 18"),
                          ("birthday", [], None)],
               "BankAccount": [("deposit", ["amount"], None), ("withdraw", ["amount"], None), ("get_balance", [], "self.balance")],
               "Counter": [("increment", [], None), ("reset", [], None), ("value", [], "self.count")],
               "Temperature": [("to_fahrenheit", [], "self.celsius * 9 / 5 + 32"), ("to_kelvin", [], "self.celsius + 273.15")],
               "Book": [("describe", [], "f'{self.title} by {self.author}'")],
               "Employee": [("raise_salary", ["percent"], None), ("annual_salary", [], "self.salary * 12")]}[cls]
    for name, params, body in rng.sample(methods, rng.randint(1, len(methods))):
        w.add(0)
        w.add(1, f"def {name}({', '.join(['self'] + params)}):")
        if body is not None:
            w.add(2, f"return {body}")
        elif name == "birthday":
            w.add(2, "self.age += 1")
        elif name == "deposit":
            w.add(2, "self.balance += amount")
        elif name == "withdraw":
            w.add(2, "if amount > self.balance:")
            w.add(3, f"raise ValueError({quote(rng, 'insufficient funds')})")
            w.add(2, "self.balance -= amount")
        elif name == "increment":
            w.add(2, "self.count += 1")
        elif name == "reset":
            w.add(2, "self.count = 0")
        elif name == "raise_salary":
            w.add(2, "self.salary *= 1 + percent / 100")
    if rng.random() < 0.5:
        w.add(0)
        w.add(1, "def __repr__(self):")
        inner = ", ".join(f"{f}={{self.{f}!r}}" for f in fields)
        w.add(2, f"return f'{cls}({inner})'")


FAMILIES = [(accumulate, 3), (build_list, 3), (dict_count, 2), (arithmetic, 2), (predicate, 3), (recursion, 2),
            (strings, 2), (files, 1), (container_class, 2), (record_class, 2)]


def module(rng):
    """One generated module: imports where used, 2-6 functions or classes, sometimes a main block."""
    parts, calls = [], []
    kinds = [f for f, k in FAMILIES for _ in range(k)]
    for _ in range(rng.randint(2, 6)):
        w = Writer(rng)
        rng.choice(kinds)(w)
        parts.append("\n".join(w.lines))
        first = w.lines[0]
        if first.startswith("def ") and "(" in first:
            calls.append(first[4:first.index("(")])
    text = "\n\n\n".join(parts) + "\n"
    imports = [m for m in ("json", "math") if f"{m}." in text]
    if rng.random() < 0.3:
        imports.append(rng.choice(["os", "sys", "random"]))
    head = "".join(f"import {m}\n" for m in sorted(set(imports)))
    if rng.random() < 0.3:
        head = f'"""{rng.choice(["Small helpers", "Utility functions", "Examples", "Exercises", "Basic algorithms"])}."""\n\n' + head
    if calls and rng.random() < 0.15:
        text += f'\n\nif __name__ == "__main__":\n    print({calls[0]}.__name__)\n'
    return (head + "\n\n" if head else "") + text


def corpus(seed, chars):
    """Generated modules, about `chars` characters in all."""
    rng = random.Random(seed)
    out, n = [], 0
    while n < chars:
        m = module(rng)
        out.append(m)
        n += len(m)
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        import ast
        # The training corpus (seed 0, as scripts/train_nano.py asks for it) and the held-out one.
        for seed, chars in ((0, 5_700_000), (1, 200_000)):
            for m in corpus(seed, chars):
                ast.parse(m)
        print("every generated module parses")
    else:
        print(module(random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)))
