"""Every Python example in the README and docs/ runs and its stated outputs hold, and every
docstring example of every public module (found by walking the package) holds."""

import ast
import doctest
import importlib
import inspect
import io
import pathlib
import pkgutil
import re
import sys
import tokenize

import pytest

import memcell

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every page with Python blocks: the README and each docs/*.md that has one (found, not listed).
DOCS = ["README.md"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if "```python" in p.read_text()
)
# Blocks too long for `make test`; they run under `make test-slow`.
SLOW_BLOCKS = {("docs/training.md", 1): "train.fit for 5000 steps on 4 seeds"}


# ----------------------------------------------------------------------------- markdown blocks


def _python_blocks(path):
    text = (ROOT / path).read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _runnable(block: str) -> bool:
    # Signature sketches (the contract, function signatures) are not meant to run on their own.
    return "Callable" not in block and "carry=None, *" not in block


# A stated output is a comment that is a value, alone or before a colon: `# (4, 20, 64)`,
# `# shape (2, 10, 16)`, `# [16, 100, 32]`, `# about -0.5: ...`, `# 0.17`, `# True` (not
# `# 4 seeds`). On a `print(...)` line it states what is printed; on `name = ...`, name's shape.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SHAPE = r"[\(\[]\s*\d+(?:\s*,\s*\d+)*\s*,?\s*[\)\]]"
_STATED = re.compile(rf"^(?P<about>about\s+)?(?:shape\s+)?(?P<value>{_SHAPE}|{_NUMBER}|True|False)(?=\s*(?:$|[:;]))")


def _stated(comment: str):
    """``(value, about)`` for a comment that states an output, else None."""
    m = _STATED.match(comment.lstrip("#").strip())
    if m is None:
        return None
    text = m["value"]
    value = tuple(int(v) for v in re.findall(r"\d+", text)) if text[0] in "([" else ast.literal_eval(text)
    return value, bool(m["about"]), text


def _tolerance(text: str) -> float:
    """Half a unit of the last stated digit: "about -0.5" holds for -0.55 < x < -0.45."""
    mantissa, _, exp = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (-decimals + (int(exp) if exp else 0))


def _check(value, stated, where):
    expected, about, text = stated
    if isinstance(expected, tuple):
        value = tuple(getattr(value, "shape", value))
        assert value == expected, f"{where}: stated {text}, got {value}"
    elif about:
        assert abs(float(value) - expected) <= _tolerance(text), f"{where}: stated about {text}, got {float(value)}"
    else:
        assert value == expected, f"{where}: stated {text}, got {value!r}"


def _instrument(block: str, where: str):
    """The block's top-level statements, with a check after (or, for print, instead of) each
    one that carries a stated output; returns the code and how many statements it checks."""
    tree = ast.parse(block)
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(block).readline):
        if tok.type == tokenize.COMMENT:
            comments.setdefault(tok.start[0], tok.string)
    body, checked = [], 0
    for stmt in tree.body:
        stated = None
        for line in range(stmt.lineno, stmt.end_lineno + 1):
            if line in comments and (stated := _stated(comments[line])) is not None:
                break
        here = f"{where}, line {stmt.lineno}"
        call = None
        if stated is not None:
            is_print = (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                        and getattr(stmt.value.func, "id", None) == "print" and len(stmt.value.args) == 1)
            if is_print:
                call, stmt = stmt.value.args[0], None
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                if isinstance(stated[0], tuple):
                    call = ast.Name(stmt.targets[0].id, ast.Load())
            if call is None:
                raise AssertionError(f"{here}: a stated output ({comments[line]!r}) on a statement that is neither "
                                     "print(x) nor name = ... with a shape; write it as an assert")
        if stmt is not None:
            body.append(stmt)
        if call is not None:
            check = ast.Expr(ast.Call(ast.Name("__check__", ast.Load()),
                                      [call, ast.Constant(stated), ast.Constant(here)], []))
            body.append(check)
            checked += 1
    module = ast.fix_missing_locations(ast.Module(body, type_ignores=[]))
    return compile(module, where, "exec"), checked


def _run_block(block: str, where: str, namespace: dict) -> int:
    """Runs one block in ``namespace``: doctest-style blocks (``>>>``) through doctest, others
    with their stated outputs checked. Returns how many outputs it compared."""
    if re.search(r"^>>> ", block, flags=re.M):
        test = doctest.DocTestParser().get_doctest(block, namespace, where, where, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        out = io.StringIO()
        result = runner.run(test, out=out.write, clear_globs=False)
        assert result.failed == 0, out.getvalue()
        return result.attempted
    code, checked = _instrument(block, where)
    namespace.setdefault("__check__", _check)
    exec(code, namespace)
    return checked


def _page_params(slow: bool):
    for path in DOCS:
        blocks = [i for i, b in enumerate(_python_blocks(path)) if _runnable(b)]
        has_slow = any((path, i) in SLOW_BLOCKS for i in blocks)
        if slow and has_slow:
            yield pytest.param(path, blocks, id=path, marks=pytest.mark.slow)
        elif not slow:
            yield pytest.param(path, [i for i in blocks if (path, i) not in SLOW_BLOCKS], id=path)


def _run_page(path, indices, tmp_path, monkeypatch):
    # Blocks of a page run in order in one namespace (later blocks use earlier names), in a
    # scratch directory, so an example that writes files writes them there.
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    blocks = _python_blocks(path)
    return sum(_run_block(blocks[i], f"{path}[{i}]", namespace) for i in indices)


@pytest.mark.parametrize("path, indices", list(_page_params(slow=False)))
def test_markdown_examples_run_and_their_stated_outputs_hold(path, indices, tmp_path, monkeypatch):
    _run_page(path, indices, tmp_path, monkeypatch)


@pytest.mark.parametrize("path, indices", list(_page_params(slow=True)))
def test_markdown_examples_too_long_for_make_test(path, indices, tmp_path, monkeypatch):
    _run_page(path, indices, tmp_path, monkeypatch)


def test_docs_have_examples_and_stated_outputs():
    blocks = [(p, i, b) for p in DOCS for i, b in enumerate(_python_blocks(p)) if _runnable(b)]
    assert len(blocks) >= 10 and {"README.md", "docs/cells_and_unrolling.md", "docs/tasks.md"} <= {p for p, _, _ in blocks}
    compared = sum(_instrument(b, f"{p}[{i}]")[1] for p, i, b in blocks if not re.search(r"^>>> ", b, flags=re.M))
    doctested = [f"{p}[{i}]" for p, i, b in blocks if re.search(r"^>>> ", b, flags=re.M)]
    assert compared >= 3 and doctested, (compared, doctested)


@pytest.mark.parametrize(
    "block, message",
    [
        ("import numpy as np\nx = np.zeros((2, 3))\nprint(x.shape)   # (2, 4)\n", r"stated \(2, 4\), got \(2, 3\)"),
        ("import numpy as np\nys = np.zeros((2, 3))     # [2, 3, 1]\n", r"stated \[2, 3, 1\], got \(2, 3\)"),
        ("print(-0.44)   # about -0.5: a factor 0.6\n", "stated about -0.5, got -0.44"),
        ("print(0.171)  # 0.17\n", "stated 0.17, got 0.171"),
        ("x = 1  # 2\n", "neither print"),
    ],
)
def test_a_wrong_stated_output_fails(block, message):
    with pytest.raises(AssertionError, match=message):
        _run_block(block, "example", {})


def test_stated_outputs_that_hold_pass():
    block = "import numpy as np\nys = np.ones((2, 3))   # shape (2, 3)\nprint(ys.shape)  # (2, 3)\nprint(-0.49)  # about -0.5\n"
    assert _run_block(block, "example", {}) == 3
    assert _run_block("print(1)  # one, not a stated value\nxs = [1]  # [T, D]\nn = 4  # 4 seeds\n", "example", {}) == 0


# ----------------------------------------------------------------------------- docstrings


def _is_private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split(".")[1:])


def _public_modules():
    """Every public module of memcell, found by walking the package: subpackages included,
    ``_private`` modules (and ``__main__``) left out."""
    found = {"memcell"}
    for info in pkgutil.walk_packages(memcell.__path__, "memcell.", onerror=lambda name: None):
        if not _is_private(info.name):
            found.add(info.name)
    return sorted(found)


def _doctests(module):
    """The module's own docstring examples, and those of the objects it re-exports from private
    modules (``memcell.tasks.train_task`` is defined in ``memcell.tasks._base``)."""
    finder = doctest.DocTestFinder()
    tests = {t.name: t for t in finder.find(module)}
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        home = getattr(obj, "__module__", None) or ""
        if home.startswith("memcell.") and _is_private(home) and (inspect.isclass(obj) or inspect.isfunction(obj)):
            source = sys.modules[home]
            for t in finder.find(obj, f"{module.__name__}.{name}", module=source, globs=vars(source)):
                tests.setdefault(t.name, t)
    return [t for t in tests.values() if t.examples]


PUBLIC = _public_modules()


@pytest.mark.parametrize("name", PUBLIC)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = io.StringIO()
    for test in _doctests(module):
        runner.run(test, out=out.write)
    failed, tried = runner.summarize(verbose=False)
    assert failed == 0, out.getvalue()
    # a module whose source shows an example must run it (none silently skipped)
    source = inspect.getsource(module)
    if ">>>" in source:
        assert tried > 0, f"{name} has examples in its source but doctest found none"


def test_every_docstring_example_is_reached_from_a_public_module():
    # Private modules' examples run through the public names that re-export them; an example in
    # a private module that no public module re-exports would never run.
    reached = {(t.filename, t.lineno) for name in PUBLIC for t in _doctests(importlib.import_module(name))}
    missing = []
    for info in pkgutil.walk_packages(memcell.__path__, "memcell.", onerror=lambda name: None):
        if not _is_private(info.name) or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for t in doctest.DocTestFinder().find(module):
            if t.examples and (t.filename, t.lineno) not in reached:
                missing.append(t.name)
    assert not missing, f"docstring examples no public module reaches: {missing}"


def test_the_walk_finds_the_modules_with_examples():
    # Found, not listed; these hold examples today, wherever a split moves their code.
    assert {"memcell.scan", "memcell.jacobian", "memcell.tasks", "memcell.tasks.synthetic", "memcell.cells.lstm"} <= set(PUBLIC)
    assert not any(_is_private(n) or n.endswith("__main__") for n in PUBLIC)
    for prefix in ("memcell.fused", "memcell.convert", "memcell.train", "memcell.linen", "memcell.nnx"):
        assert any(n == prefix or n.startswith(prefix + ".") for n in PUBLIC), prefix


# ----------------------------------------------------------------------------- stated errors


def _error_cases():
    import jax
    import jax.numpy as jnp

    cell = memcell.lstm(4)
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.ones((2, 5, 3))
    unroll = lambda *a, **k: memcell.unroll(cell, params, *a, **k)
    return {
        "`xs` of rank < 2": lambda: unroll(jnp.ones(5)),
        "wrong feature size": lambda: unroll(jnp.ones((5, 2))),
        "integer `xs`": lambda: unroll(jnp.ones((5, 3), jnp.int32)),
        "float `lengths`": lambda: unroll(xs, lengths=jnp.ones(2)),
        "`lengths` of the wrong shape": lambda: unroll(xs, lengths=jnp.ones(3, jnp.int32)),
        "`lengths` out of range": lambda: unroll(xs, lengths=jnp.array([1, 6])),
        "a carry of the wrong shape": lambda: unroll(xs, cell.initial_carry(params, (3,))),
    }


def test_the_error_table_in_cells_and_unrolling_states_the_messages_raised():
    text = (ROOT / "docs" / "cells_and_unrolling.md").read_text()
    section = text.split("## Errors", 1)[1]
    rows = re.findall(r"^\| (.+?) \| `(\w+): (.+?)`[^`|]* \|$", section, flags=re.M)
    cases = _error_cases()
    assert {r[0] for r in rows} == set(cases), "every row of the table has a case here, and no more"
    for label, kind, message in rows:
        pattern = re.escape(message).replace(re.escape("..."), ".*")
        with pytest.raises(Exception) as err:
            cases[label]()
        assert type(err.value).__name__ == kind and re.fullmatch(pattern, str(err.value)), (label, str(err.value))
