"""Text from others (a repository, a file list, a data directory, a server) made safe to print."""

from __future__ import annotations


def printable(value: object) -> str:
    """str(value) with every non-printable character escaped as repr escapes it (`\\x1b`, `\\n`,
    `\\u202e`): a file name or a repository record can hold terminal escapes, newlines that forge an
    output line, or bidirectional overrides, and none of them must reach a terminal or a log raw."""
    text = str(value)
    if text.isprintable():  # the common case, in C
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def printable_lines(text: str) -> str:
    """`text` of several lines made printable line by line (its own line breaks kept)."""
    return "\n".join(printable(line) for line in text.split("\n"))
