#!/usr/bin/env python3
"""The layout rules of the source tree, checked: no source file in crates/*/src over 900 lines, and no
import circle between the files of a crate (a file that names a module of its crate, directly or
through others, is never named back by it). Prints each violation; exits 1 if there is any.

Edges are every `crate::a::b`, `super::x` and `self::x` path in a file (in `use` lines and inline),
resolved to the file that defines that module, and every bare `child::x` path to a child module a
file declares; `mod x;` declarations themselves are not edges, re-exports are. So a crate's lib.rs
(or a folder's mod.rs) may name its children, and the children never name it back: what they share
lives in a file of its own. The crate root (lib.rs, main.rs) is left out: it is the crate's facade,
and `crate::Error` from anywhere is fine.
"""

import pathlib
import re
import sys

MAX_LINES = 900
ROOT = pathlib.Path(__file__).resolve().parent.parent


def module_path(src: pathlib.Path, f: pathlib.Path) -> tuple:
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] if "\"" not in line else line for line in text.splitlines())


def inline_modules(text: str):
    """A function giving, for a position in `text`, the inline modules (`mod x { … }`) it lies in."""
    opens = {m.end() - 1: m.group(1) for m in re.finditer(r"\bmod\s+(\w+)\s*\{", text)}
    spans, stack, depth = [], [], 0
    for i, c in enumerate(text):
        if c == "{":
            depth += 1
            if i in opens:
                stack.append((opens[i], depth, i))
        elif c == "}":
            if stack and stack[-1][1] == depth:
                name, _, start = stack.pop()
                spans.append((start, i, name))
            depth -= 1

    def at(pos: int) -> tuple:
        inside = sorted((s, n) for s, e, n in spans if s < pos < e)
        return tuple(n for _, n in inside)

    return at


def expand_use_groups(text: str) -> list:
    """`use crate::a::{b, c::d}` → [('crate::a::b', pos), ('crate::a::c::d', pos)] (one level of
    braces is enough: the first segment after the prefix names the module)."""
    paths = []
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)*)::\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", text):
        prefix = m.group(1)
        for item in re.split(r",(?![^{]*\})", m.group(2)):
            item = item.strip()
            if item:
                paths.append((prefix + "::" + re.split(r"[\s{]", item)[0], m.start()))
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        paths.append((m.group(1), m.start()))
    return paths


def resolve(path: str, here: tuple, inline: tuple, modules: dict):
    """The file module `path` names, from file module `here` inside its inline modules `inline`."""
    segs = path.split("::")
    if segs[0] == "crate":
        base, rest = (), segs[1:]
    else:
        base = here + inline
        rest = segs
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
    if len(base) > len(here) and base[: len(here)] == here:
        return here  # within the same file
    best = None
    cur = base
    if cur in modules:
        best = cur
    for s in rest:
        cur = cur + (s,)
        if cur in modules:
            best = cur
        else:
            break
    return best


def check_crate(src: pathlib.Path) -> list:
    problems = []
    files = sorted(src.rglob("*.rs"))
    modules = {module_path(src, f): f for f in files}
    graph = {m: set() for m in modules}
    for m, f in modules.items():
        text = f.read_text()
        n = text.count("\n")
        if n > MAX_LINES:
            problems.append(f"{f.relative_to(ROOT)}: {n} lines (at most {MAX_LINES})")
        # a file's own tests module may use anything: it is not part of the layout
        body = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
        code = strip_comments(body)
        inline_at = inline_modules(code)
        for p, pos in expand_use_groups(code):
            target = resolve(p, m, inline_at(pos), modules)
            if target is not None and target != m and target != ():
                graph[m].add(target)
        # a child module named by a bare path (`child::f()`, `pub use child::X`)
        for child in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code, flags=re.M):
            if m != () and (m + (child,)) in modules and re.search(rf"(?<![:\w]){child}::", code):
                graph[m].add(m + (child,))
    # strongly connected components (Tarjan)
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    for comp in sccs:
        names = sorted("::".join(c) or "lib" for c in comp)
        problems.append(f"{src.relative_to(ROOT)}: import circle between {', '.join(names)}")
    return problems


def main() -> int:
    problems = []
    for src in sorted(ROOT.glob("crates/*/src")):
        problems += check_crate(src)
    for p in problems:
        print(p)
    if problems:
        print(f"layout: {len(problems)} problem(s)")
        return 1
    print("layout: no file over", MAX_LINES, "lines, no import circle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
