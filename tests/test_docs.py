"""Every Python example in the README and the core guide runs, and every docstring example holds."""

import doctest
import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/cells_and_unrolling.md", "docs/vanishing_gradients.md"]
MODULES = ["memcell.cells.rnn", "memcell.cells.lstm", "memcell.cells.gru", "memcell.scan"]


def _python_blocks(path):
    text = (ROOT / path).read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _runnable(block: str) -> bool:
    # Signature sketches (the contract, function signatures) are not meant to run on their own.
    return "Callable" not in block and "carry=None, *" not in block


@pytest.mark.parametrize(
    "path, index",
    [(p, i) for p in DOCS for i, block in enumerate(_python_blocks(p)) if _runnable(block)],
)
def test_markdown_example_runs(path, index):
    exec(compile(_python_blocks(path)[index], f"{path}[{index}]", "exec"), {})


def test_docs_have_examples():
    assert sum(_runnable(b) for p in DOCS for b in _python_blocks(p)) >= 4


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    failures, tried = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
