"""The bytes of a data file, bounded: transparent decompression, lines read up to a cap, and the records of
a JSON document split out by nesting depth and size before any parser builds them.

A record over a cap is skipped while it is scanned, never held: memory stays within the size cap and one
read chunk whatever the input (a 400 KB array item nested 200,000 levels deep, a 100 MB line).

Why by hand: the streaming parser this replaced (ijson) builds each array item in its C backend with no limit
on depth or size (the 200,000-deep item grew it to ~23 GB), and `json.loads` recurses once a level. No parser
we could find takes per-record caps, so the records are cut out of the bytes here (regular expressions do
the scanning) and `json.loads` parses only those within the caps.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import lzma
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, AnyStr

from rlhf.errors import DataError

CODECS = (".gz", ".bz2", ".xz", ".zst")
CHUNK = 2**16
BOM = b"\xef\xbb\xbf"
# Outside a string: a whole string (when it ends in the buffer), a bracket, a comma, or a string's opening quote.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},"]', re.S)
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.S)  # stops at the closing quote or a lone backslash
_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_NEWLINES = (b"\n", "\n", "\r")  # what ends a line of bytes, or of text read with newline=""
FAST_DEPTH = 16  # array items nested up to this deep are split by one regular expression match


OVER_LIMIT = ("record too large", "record too deep")  # the reasons' categories


@dataclass(frozen=True)
class Limits:
    """What one record may take: nesting depth (containers inside containers) and bytes."""

    max_depth: int = 64
    max_record_bytes: int = 64 * 2**20

    def too_large(self) -> str:
        return f"{OVER_LIMIT[0]} (over {self.max_record_bytes / 2**20:g} MiB; max_record_bytes)"

    def too_deep(self) -> str:
        return f"{OVER_LIMIT[1]} (nested over {self.max_depth} levels; max_depth)"


DEFAULT_LIMITS = Limits()


def codec(path: Path) -> str:
    """The compression suffix of `path` (".gz", ...), or ""."""
    return path.suffix if path.suffix in CODECS else ""


def data_suffix(path: Path) -> str:
    """The suffix that names the format, under any compression: ".jsonl" for `test.jsonl.gz`."""
    return Path(path.name.removesuffix(codec(path))).suffix


def open_bytes(path: Path) -> IO[bytes]:
    """`path` for reading, decompressed as it streams (gzip, bzip2 and xz from the standard library, zstd
    with `zstandard`); buffered, so `readline(size)` and `read(size)` work on every kind."""
    kind = codec(path)
    if kind == ".zst":
        try:
            import zstandard
        except ImportError:
            raise DataError(f"{path}: reading .zst files needs zstandard: pip install zstandard") from None
        raw = zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True)
        return io.BufferedReader(raw, CHUNK)  # type: ignore[arg-type]
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(kind)
    return opener(path, "rb") if opener else path.open("rb")  # type: ignore[return-value]


def decompression_errors() -> tuple[type[Exception], ...]:
    """What a damaged compressed file raises while it is read."""
    errors: tuple[type[Exception], ...] = (OSError, EOFError, lzma.LZMAError)
    try:
        import zstandard

        return (*errors, zstandard.ZstdError)
    except ImportError:
        return errors


def bounded_lines(handle: IO[AnyStr], cap: int) -> Iterator[AnyStr | None]:
    """Each line of at most `cap` bytes (or characters, from a text handle), its newline not counted; None
    for a longer one, whose rest is read past a chunk at a time and dropped."""
    while line := handle.readline(cap + 1):
        if len(line) > cap and line[-1:] not in _NEWLINES:
            while (rest := handle.readline(CHUNK)) and rest[-1:] not in _NEWLINES:
                pass
            yield None
        else:
            yield line


class StructureError(Exception):
    """A JSON document whose records cannot be told apart (unbalanced, or data after the array's end)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


@dataclass(slots=True)
class Piece:
    """One record's bytes as split from a document, or why it was skipped, and where it starts."""

    index: int
    line: int  # 1-based line of the record's first byte
    column: int  # 1-based
    data: bytes | None  # None: over a cap, skipped unread
    reason: str = ""
    head: bytes = b""  # the first bytes of a skipped record, for the quarantine excerpt


def split_json(handle: IO[bytes], limits: Limits, array: bool) -> Iterator[Piece]:
    """The items of a top-level JSON array (`array`), or the one value of a whole document, as bytes.

    Only strings, brackets and commas are scanned (the regular expressions skip string bodies at C speed),
    enough to find where records start and end; a record's own syntax is left to `json.loads`. An array
    whose items cannot be told apart raises `StructureError`.
    """
    return _Splitter(handle, limits, array).pieces()


@functools.cache
def _whole_item(depth: int) -> re.Pattern[bytes]:
    """One array item nested at most `depth` deep, up to the comma or bracket after it: strings, brackets
    (their kinds are left for `json.loads` to check) and scalars, matched possessively (never backtracking,
    so a failed match costs one pass)."""
    group = b""
    for _ in range(depth):
        inner = _STRING + rb'|[^"\[\]{}]++' + (b"|" + group if group else b"")
        group = rb"[\[{](?:" + inner + rb")*+[\]}]"
    return re.compile(rb"\s*+(?:" + group + b"|" + _STRING + rb'|[^,\[\]{}"\s]++)\s*+(?=[,\]])', re.S)


class _Splitter:
    """The scan state of `split_json`: a buffer from the current record's start (or, while a record over a
    cap is skipped, from the scan position) to the last byte read."""

    def __init__(self, handle: IO[bytes], limits: Limits, array: bool) -> None:
        self.handle, self.limits, self.array = handle, limits, array
        self.buf = bytearray()
        self.base = 0  # absolute offset of buf[0]
        self.cursor = 0  # absolute offset up to which lines are counted
        self.lines = 0  # newlines before the cursor
        self.line_start = 0  # absolute offset of the start of the cursor's line
        self.index = 0
        self.start: int | None = None if array else 0  # the current record's first byte
        self.where = (1, 1)  # its line and column, once it is skipped
        self.skipped = ""
        self.head = b""
        if (first := handle.read(len(BOM))) != BOM:
            self.buf += first

    def pieces(self) -> Iterator[Piece]:
        limit, offset = self.limits.max_record_bytes, 1 if self.array else 0
        depth, pos, in_string = 0, 0, False
        whole = _whole_item(min(self.limits.max_depth, FAST_DEPTH))
        while True:
            if self.array and depth == 1 and pos == self.start and not self.skipped:
                # The common case: whole, shallow items in the buffer, one match each; the rest (an item
                # cut by the buffer's end, a deep or a big one, the array's end) is scanned token by token.
                while (match := whole.match(self.buf, pos - self.base)) and (
                    match.end() - (pos - self.base) <= limit
                ):
                    pos = self.base + match.end()
                    if self.buf[match.end()] != ord(","):
                        break
                    yield Piece(self.index, *self._where(self.start), bytes(match.group()))
                    self.index += 1
                    pos = self.start = pos + 1
                self._drop(self.start)
            if self.start is not None and not self.skipped and pos - self.start > limit:
                self._skip(self.limits.too_large())
            if self.skipped and pos > self.base:
                self._drop(pos)
            rel = pos - self.base
            if in_string:
                end = _STRING_REST.match(self.buf, rel).end()  # type: ignore[union-attr]
                pos = self.base + end
                if end < len(self.buf) and self.buf[end] == ord('"'):
                    in_string, pos = False, pos + 1
                elif not self._more():
                    if self.array:
                        raise StructureError(self._where(pos)[0], "the file ends inside a string")
                    yield self._piece(pos)
                    return
                continue
            match = _TOKEN.search(self.buf, rel)
            if match is None:
                pos = self.base + len(self.buf)
                if not self._more():
                    if self.array:
                        if depth:
                            raise StructureError(self._where(pos)[0], "the file ends inside the array")
                    else:
                        yield self._piece(pos)
                    return
                continue
            token, pos = match.group(), self.base + match.end()
            if token == b'"':
                in_string = True
            elif token in (b"[", b"{"):
                depth += 1
                if self.array and depth == 1:
                    if token != b"[":
                        raise StructureError(self._where(pos)[0], "expected an array of records")
                    self.start = pos
                elif depth - offset > self.limits.max_depth and not self.skipped:
                    self._skip(self.limits.too_deep())
            elif token in (b"]", b"}"):
                depth -= 1
                if self.array and depth <= 0:
                    if depth < 0 or token != b"]":
                        raise StructureError(self._where(pos)[0], "unbalanced brackets")
                    if piece := self._piece(pos - 1, closing=True):
                        yield piece
                    self._trailing(pos)
                    return
            elif token == b"," and self.array and depth == 1:
                if piece := self._piece(pos - 1):
                    yield piece
                self.start, self.skipped, self.head = pos, "", b""
                self._drop(pos)

    def _piece(self, end: int, closing: bool = False) -> Piece | None:
        """The record from `start` to `end`; None for the nothing between `[` and `]` of an empty array."""
        assert self.start is not None
        if self.skipped:
            piece = Piece(self.index, *self.where, None, self.skipped, self.head)
        else:
            data = bytes(self.buf[self.start - self.base : end - self.base])
            if closing and self.index == 0 and not data.strip():
                return None
            piece = Piece(self.index, *self._where(self.start), data)
        self.index += 1
        return piece

    def _skip(self, reason: str) -> None:
        assert self.start is not None
        self.skipped, self.where = reason, self._where(self.start)
        self.head = bytes(self.buf[self.start - self.base : self.start - self.base + 200])

    def _trailing(self, pos: int) -> None:
        """Only whitespace may follow the array."""
        self._drop(pos)
        while True:
            if self.buf.strip():
                raise StructureError(self._where(pos)[0], "data after the end of the array")
            pos = self.base + len(self.buf)
            self._drop(pos)
            if not self._more():
                return

    def _more(self) -> bool:
        chunk = self.handle.read(CHUNK)
        self.buf += chunk
        return bool(chunk)

    def _drop(self, upto: int) -> None:
        """Forget the buffer before absolute offset `upto`."""
        self._advance(upto)
        del self.buf[: upto - self.base]
        self.base = upto

    def _where(self, offset: int) -> tuple[int, int]:
        """Line and column (1-based) of an absolute offset (never before one asked for earlier)."""
        self._advance(offset)
        return self.lines + 1, offset - self.line_start + 1

    def _advance(self, offset: int) -> None:
        """Move the line count from `cursor` on to `offset`."""
        low, high = self.cursor - self.base, offset - self.base
        if newlines := self.buf.count(b"\n", low, high):
            self.lines += newlines
            self.line_start = self.base + self.buf.rfind(b"\n", low, high) + 1
        self.cursor = max(self.cursor, offset)
