"""Griffe extension: read memcell's Google-style docstrings as their authors wrote them.

Two of memcell's docstring habits are valid Google style (and read well in the source) but
griffe's parser does not take them:

- ``Example:`` (singular) heads the runnable example of every cell; griffe only knows
  ``Examples:``, and would render the doctest as an admonition of plain Markdown text (where
  ``batch["xs"]["ys"]`` even reads as a cross-reference). It is read as ``Examples:``.
- ``xs, carry, lengths: as for memcell.unroll.`` documents several parameters in one entry;
  griffe would warn that a parameter named ``xs, carry, lengths`` is not in the signature.
  The entry is expanded into one entry a name, so griffe still checks every name against the
  signature (a stale or misspelt parameter name still fails the strict build).

Only the docstring text griffe parses is changed; the source is not touched.

It also works around griffe's issue #124 ("submodules overshadow imports of the same name"):
``memcell.cells`` does ``from memcell.cells.lstm import lstm``, so at run time
``memcell.cells.lstm`` (and ``memcell.lstm``) is the factory function, but griffe keeps the
submodule under that name, and the factories ``lstm``, ``gru`` and ``rnn`` would vanish from
the reference. Once the package is loaded, such a name is rebound to what the import names.
"""

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$")
_ITEM_SECTION = re.compile(
    r"^(\s*)(Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments|Other Parameters|Attributes):\s*$"
)
_GROUPED = re.compile(r"^(\s*)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*\([^)]*\))?:(\s.*|)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _expand_grouped(lines: list[str]) -> list[str]:
    out: list[str] = []
    section_indent = None  # indent of the current Args-like section's title, if inside one
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() and section_indent is not None and _indent(line) <= section_indent:
            section_indent = None
        if (m := _ITEM_SECTION.match(line)) is not None:
            section_indent = len(m.group(1))
        elif section_indent is not None and (m := _GROUPED.match(line)) is not None:
            indent, names, annotation, rest = m.groups()
            block = [line]
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > len(indent)):
                block.append(lines[j])
                j += 1
            while len(block) > 1 and not block[-1].strip():  # blank lines stay between items
                block.pop()
                j -= 1
            for name in re.split(r"\s*,\s*", names):
                out.append(f"{indent}{name}{annotation or ''}:{rest}")
                out.extend(block[1:])
            i = j
            continue
        out.append(line)
        i += 1
    return out


def _modules(module: griffe.Module):
    yield module
    for member in module.members.values():
        if not member.is_alias and member.is_module:
            yield from _modules(member)


def _aliases(obj: griffe.Object):
    for member in obj.members.values():
        if member.is_alias:
            yield member
        elif member.is_module or member.is_class:
            yield from _aliases(member)


class MemcellDocstrings(griffe.Extension):
    """Read ``Example:`` as ``Examples:``, expand grouped parameter entries, unshadow imports."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        """Rebind names whose import shadows a submodule of the same name (griffe #124)."""
        shadowed = {}  # submodule path -> (parent module, name, the imported object)
        for module in _modules(pkg):
            for name, import_path in module.imports.items():
                member = module.members.get(name)
                if member is None or member.is_alias or not member.is_module or import_path == member.path:
                    continue
                shadowed[member.path] = (module, name, loader.modules_collection.get_member(import_path))
        if not shadowed:
            return
        # Resolve every alias now, while the submodules can still be reached by path.
        for alias in _aliases(pkg):
            if alias.target_path in shadowed:
                alias.target = shadowed[alias.target_path][2]
            elif any(alias.target_path.startswith(path + ".") for path in shadowed):
                alias.target = loader.modules_collection.get_member(alias.target_path)
        for module, name, target in shadowed.values():
            module.members[name] = griffe.Alias(name, target, parent=module)

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        docstring = obj.docstring
        if docstring is None:
            return
        lines = [_EXAMPLE.sub(r"\1Examples:", line) for line in docstring.value.split("\n")]
        docstring.value = "\n".join(_expand_grouped(lines))
