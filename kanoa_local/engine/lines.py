"""Whole lines out of output that arrives in pieces (a log file read as it grows, a container's
or a pod's log stream): a line split between two pieces, or a UTF-8 character split between
them, comes out whole. Every log follower of every runtime reads through this."""

from __future__ import annotations

import codecs
from typing import Iterable, Iterator


class LineSplitter:
    def __init__(self) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._buf = ""

    def feed(self, data: bytes | str) -> list[str]:
        """The lines ``data`` completes (without their line ends)."""
        self._buf += self._decode(data) if isinstance(data, bytes) else data
        *done, self._buf = self._buf.split("\n")
        return [ln.rstrip("\r") for ln in done]

    def rest(self) -> list[str]:
        """What is left once the stream ended: a last line without its line end."""
        tail, self._buf = self._buf + self._decode(b"", final=True), ""
        return [tail.rstrip("\r")] if tail else []


def lines_of(chunks: Iterable[bytes | str]) -> Iterator[str]:
    """Each line of a stream of pieces, as it completes."""
    split = LineSplitter()
    for chunk in chunks:
        yield from split.feed(chunk)
    yield from split.rest()
