"""Opening the logs a user names: files or directories (KumoMTA's log_dir: every file in it, by name), plain,
gzip or zstd (told by their first bytes, not their names), read as lines of text however large.

A compressed file that ends early (the segment kumod is still writing, a copy cut short) gives the lines it has
and says so (`LogFile.cut_short`); only a file that cannot be opened at all is an error.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BUFFER = 1 << 20
COMPRESSED_CHUNK = 1 << 16  # zstd input read at once: JSON records decompress to some 14 times as much
TELL_EVERY = 4095  # lines between two readings of the position on disk (a system call each)
_CUT_SHORT = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)


class SourceError(ValueError):
    """A log that cannot be read; the message names it."""


@dataclass
class LogFile:
    """One file to read, and what reading it found."""

    path: Path
    size: int  # bytes on disk
    mtime: float
    compression: str = ""
    position: int = 0  # bytes read from disk so far
    cut_short: str | None = None  # why a compressed stream ended early

    def lines(self) -> Iterator[str]:
        """The file's lines (text, undecodable bytes replaced), in order; `position` follows the bytes read."""
        try:
            with open(self.path, "rb") as raw:
                self.compression = _compression(raw)
                with self._text(raw) as text:
                    try:
                        for n, line in enumerate(text):
                            if not n & TELL_EVERY:
                                self.position = raw.tell()
                            yield line
                    except _CUT_SHORT as e:
                        self.cut_short = f"the {self.compression} stream ends early ({e})"
                self.position = self.size
        except OSError as e:
            raise SourceError(f"{self.path}: cannot be read: {e.strerror or e}") from None

    def _text(self, raw: IO[bytes]) -> io.TextIOWrapper:
        stream: IO[bytes] | gzip.GzipFile
        if self.compression == "gzip":
            stream = gzip.GzipFile(fileobj=raw)
        elif self.compression == "zstd":
            stream = io.BufferedReader(ZstdFrames(raw), BUFFER)
        else:
            stream = raw
        return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline=None)


class ZstdFrames(io.RawIOBase):
    """The decompressed bytes of zstd frames one after another (kumod's segments), raising ZstdError when the
    input ends inside a frame (zstandard's stream reader ends quietly there)."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.context = zstandard.ZstdDecompressor()
        self.frame = self.context.decompressobj()
        self.in_frame = False
        self.out = b""
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self.offset >= len(self.out):
            chunk = self.raw.read(COMPRESSED_CHUNK)
            if not chunk:
                if self.in_frame:
                    raise zstandard.ZstdError("the input ends inside a frame")
                return 0
            self.out, self.offset = self._decompress(chunk), 0
        n = min(len(buffer), len(self.out) - self.offset)
        buffer[:n] = self.out[self.offset : self.offset + n]
        self.offset += n
        return n

    def _decompress(self, chunk: bytes) -> bytes:
        parts = []
        while chunk:
            parts.append(self.frame.decompress(chunk))
            self.in_frame = not self.frame.eof
            if self.in_frame:
                break
            chunk = self.frame.unused_data
            self.frame = self.context.decompressobj()
        return b"".join(parts)


def _compression(raw: IO[bytes]) -> str:
    head = raw.read(4)
    raw.seek(0)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return ""


def expand(paths: list[str]) -> list[LogFile]:
    """The files the paths name, a directory's regular files by name; SourceError for a path that is missing or
    unreadable, or a directory with no file."""
    files: list[LogFile] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not inside:
                raise SourceError(f"{given}: a directory with no log file in it")
            files.extend(_file(p) for p in inside)
        elif path.exists():
            files.append(_file(path))
        else:
            raise SourceError(f"{given}: no such file or directory")
    return files


def _file(path: Path) -> LogFile:
    try:
        stat = path.stat()
        if not os.access(path, os.R_OK):
            raise SourceError(f"{path}: cannot be read: permission denied")
    except OSError as e:
        raise SourceError(f"{path}: cannot be read: {e.strerror or e}") from None
    return LogFile(path, stat.st_size, stat.st_mtime)
