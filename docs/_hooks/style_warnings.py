"""mkdocs hook: griffe's warnings about docstring *style* are shown, but do not fail the build.

`mkdocs build --strict` fails on every warning. Warnings about references stay warnings (an
unresolved cross-reference, a documented parameter missing from the signature, a broken
link): they fail the build. The kinds below only say that an entry is not in the exact shape
griffe's Google parser expects, while the text still renders; they are logged at INFO,
prefixed with "docstring style:", so they stay visible in the build output.
"""

import logging

# Message prefixes of griffe's Google-parser warnings that are about layout only.
STYLE_ONLY = (
    # "Raises:" entry written as a sentence ("ValueError naming the file ...") instead of
    # "ValueError: naming the file ..."; it renders as text.
    "Failed to get 'exception: description' pair from",
)


class _DemoteStyleWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and any(s in record.getMessage() for s in STYLE_ONLY):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = f"docstring style: {record.getMessage()}", ()
        return True


# mkdocstrings routes griffe's logger to "mkdocs.plugins.griffe".
logging.getLogger("mkdocs.plugins.griffe").addFilter(_DemoteStyleWarnings())
