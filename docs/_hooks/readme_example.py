"""mkdocs hook: the front page's README snippet must still be the README's example.

docs/index.md includes the README's example with pymdownx.snippets by line range
(``--8<-- "README.md:START:END"``), so README.md holds the one copy. A line range goes stale
silently when the README is edited above the example; this hook fails the build instead,
naming the range the directive should have.
"""

import pathlib
import re

from mkdocs.exceptions import PluginError

_DIRECTIVE = re.compile(r'--8<--\s+"README\.md:(\d+):(\d+)"')
_HEADING = "## Example"


def _example_range(readme: pathlib.Path) -> tuple[int, int]:
    """1-based lines of the opening and closing fence of the first code block under the heading."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    try:
        heading = lines.index(_HEADING)
    except ValueError:
        raise PluginError(f"README.md: no '{_HEADING}' heading for docs/index.md to include") from None
    start = next((i for i in range(heading + 1, len(lines)) if lines[i].startswith("```")), None)
    end = None if start is None else next(
        (i for i in range(start + 1, len(lines)) if lines[i].strip() == "```"), None)
    if start is None or end is None:
        raise PluginError(f"README.md: no complete code block under '{_HEADING}'")
    return start + 1, end + 1


def on_page_markdown(markdown, page, config, files):
    """Check every README.md snippet range of a page against the README's example block."""
    directives = _DIRECTIVE.findall(markdown)
    if not directives:
        return markdown
    root = pathlib.Path(config["config_file_path"]).parent
    expected = _example_range(root / "README.md")
    for start, end in directives:
        if (int(start), int(end)) != expected:
            raise PluginError(
                f"{page.file.src_path}: README.md:{start}:{end} is not the README's example; "
                f"it now spans README.md:{expected[0]}:{expected[1]}"
            )
    return markdown
