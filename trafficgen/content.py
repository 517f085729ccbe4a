"""Bodies that look like mail, built once at start and cut per message: text, HTML, attachments, and their sizes.

Three blocks are generated at start: readable text, HTML whose every line is a whole element, and base64 lines of
random bytes (an attachment). Each is repeated so that a window of the largest size fits from any line start.
A message's body is a window of each part it has, starting at a line its variant picks, ending at the first line
end past the size the part needs: memoryview slices, no copy, no email-package generation per message. Variants
(a start line per part, whether the message has an attachment and which) are picked by the message's number, so
consecutive bodies differ (VARIANTS of them, built once when the size is fixed); sizes are drawn per message (a
table of log-normal quantiles is built once).

`--content text` is one text/plain part; `html` is multipart/alternative (text and HTML); `mixed` is that, and a
share of the messages are multipart/mixed with a base64 attachment. Sizes count the whole body: MIME boundaries and
part headers are taken off what the parts get. Every line is at most 78 characters and CRLF-ended (RFC 5322
2.1.1); no line starts with "." (nothing to dot-stuff).
"""

from __future__ import annotations

import base64
import bisect
import math
import random
import re
from statistics import NormalDist
from typing import NamedTuple

from trafficgen.bodysize import LogNormalSize, QuantileSize

LINE_MAX = 78
BLOCK_SIZE = 64 * 1024  # unique text; larger bodies repeat it
ATTACHMENT_LINES = 1024  # base64 lines of 57 random bytes each (76 characters)
QUANTILES = 4096  # a log-normal size is one of this many equally likely quantiles
VARIANTS = 256  # bodies of one size differ for this many consecutive messages
Z99 = 2.3263478740408408  # the standard normal's 99th percentile

WORDS = """
account action address advice afternoon agenda agreement answer april archive arrival article attached
attention august autumn balance basket beach before benefit better birthday board booking branch break
bring budget building business calendar call campaign change chapter check choice client coffee colour
comment company complete confirm contact copy corner cost course credit customer daily dashboard data
deadline december delivery department design detail dinner direct discount document draft early east
edition email energy evening event example exchange expected family february feedback field figure final
first follow forward friday friend future garden global good green group growth guide happy harbour
holiday honest hotel idea important include invoice island issue january journey july june kitchen
knowledge label later launch leader letter library light limit local lunch march market meeting member
message method minute monday month morning network news next note notice november number october offer
office online open order owner package page paper partner payment people period picture place plan
please point policy portal present price print process product project promise question quick quiet
quote reason receipt record reference region reminder report request review river road saturday
schedule school season second secure service share short simple site small soon spring staff start
status summer sunday supply support survey system table team thanks thursday ticket today together
total travel tuesday update useful value version village visit wednesday week welcome window winter
world year yesterday
""".split()  # noqa: SIM905 (a block of words reads better than a list of 200 strings)

# Content-Type (and encoding) headers, by the kind of body a message has.
TEXT, ALTERNATIVE, MIXED = 0, 1, 2
ALT, MIX = "=_trafficgen_alternative", "=_trafficgen_mixed"  # "=_" never occurs in any part's text
MIME_HEADERS = (
    "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n",
    f'Content-Type: multipart/alternative; boundary="{ALT}"\r\n',
    f'Content-Type: multipart/mixed; boundary="{MIX}"\r\n',
)
PREAMBLE = b"This is a message in MIME format.\r\n\r\n"
TEXT_PART = f"--{ALT}\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
HTML_HEAD = b'<!DOCTYPE html>\r\n<html><head><meta charset="us-ascii"><title>Message</title></head>\r\n<body>\r\n'
HTML_TAIL = b"</body></html>\r\n"
HTML_PART = f"--{ALT}\r\nContent-Type: text/html; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
ALT_OPEN = PREAMBLE + TEXT_PART.encode()
ALT_MIDDLE = HTML_PART.encode() + HTML_HEAD
ALT_CLOSE = HTML_TAIL + f"--{ALT}--\r\n".encode()
MIX_OPEN = (
    PREAMBLE + f'--{MIX}\r\nContent-Type: multipart/alternative; boundary="{ALT}"\r\n\r\n'.encode() + TEXT_PART.encode()
)
MIX_CLOSE = f"--{MIX}--\r\n".encode()
ATTACHMENTS = (
    ("application/pdf", "invoice.pdf"),
    ("image/jpeg", "photo.jpg"),
    ("application/pdf", "statement.pdf"),
    ("image/png", "chart.png"),
    ("application/zip", "documents.zip"),
    ("application/octet-stream", "data.bin"),
)
ATTACHMENT_HEADS = tuple(
    (
        f'--{MIX}\r\nContent-Type: {kind}; name="{name}"\r\nContent-Disposition: attachment; '
        f'filename="{name}"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    ).encode()
    for kind, name in ATTACHMENTS
)
# Shares of the size the parts get: text and HTML of an alternative, and an attachment beside them.
TEXT_SHARE = 0.4
ATTACHMENT_SHARE = 0.7
GOLDEN = (math.sqrt(5) - 1) / 2  # variant v has an attachment when frac(v * GOLDEN) < share: an exact share


def readable_block(rng: random.Random, size: int = BLOCK_SIZE) -> bytes:
    """About `size` bytes of sentences in paragraphs, lines wrapped at 78 characters, CRLF line ends."""
    lines: list[str] = []
    total = 0
    line = ""
    while total < size:
        sentence = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
        sentence[0] = sentence[0].capitalize()
        for word in (*sentence[:-1], sentence[-1] + "."):
            if line and len(line) + 1 + len(word) > LINE_MAX:
                lines.append(line)
                total += len(line) + 2
                line = word
            else:
                line = f"{line} {word}" if line else word
        if rng.random() < 0.2:  # end the paragraph
            lines.extend((line, ""))
            total += len(line) + 4
            line = ""
    if line:
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def html_block(rng: random.Random, size: int = BLOCK_SIZE) -> bytes:
    """About `size` bytes of HTML in which every line is a whole element (a paragraph, a heading, a link), so a
    window of whole lines is well-formed; lines of at most 78 characters, CRLF line ends."""
    lines: list[str] = []
    total = 0
    while total < size:
        roll = rng.random()
        if roll < 0.08:
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5)))
            line = f"<h2>{words.capitalize()}</h2>"
        elif roll < 0.2:
            path = "/".join(rng.choice(WORDS) for _ in range(2))
            label = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))).capitalize()
            line = f'<p><a href="https://example.test/{path}">{label}</a></p>'
            if len(line) > LINE_MAX:  # one word each always fits
                line = f'<p><a href="https://example.test/{path.partition("/")[0]}">{label.split()[0]}</a></p>'
        else:
            sentence = rng.choice(WORDS).capitalize()
            while True:
                word = rng.choice(WORDS)
                if len(sentence) + len(word) + len("<p> .</p>") > LINE_MAX:
                    break
                sentence = f"{sentence} {word}"
                if rng.random() < 0.1:
                    break
            line = f"<p>{sentence}.</p>"
        lines.append(line)
        total += len(line) + 2
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def base64_block(rng: random.Random, lines: int = ATTACHMENT_LINES) -> bytes:
    """Random bytes in base64 lines of 76 characters (57 bytes each): any run of whole lines decodes."""
    data = rng.randbytes(57 * lines)
    encoded = base64.b64encode(data)
    return b"".join(encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76))


class Text:
    """A block of CRLF-ended lines, repeated so that `largest` bytes fit from any of its line starts; windows of
    it are memoryview slices (no copy)."""

    def __init__(self, block: bytes, largest: int):
        self.block = block
        self.ends = [m.end() for m in re.finditer(b"\r\n", block)]
        self.starts = [0, *self.ends[:-1]]
        repeats = largest // len(block) + 2
        self.text = memoryview(block * repeats)

    def end_for(self, size: int) -> int:
        """The first line end at or after `size` bytes."""
        length = len(self.block)
        whole, rest = divmod(size, length)
        if rest == 0:
            return whole * length
        return whole * length + self.ends[bisect.bisect_left(self.ends, rest)]

    def get(self, size: int) -> memoryview:
        """At least `size` bytes from the start, ending on a line end."""
        return self.text[: self.end_for(size)]

    def window(self, start: int, size: int) -> memoryview:
        """At least `size` bytes from `start` (a line start), ending on a line end."""
        if size <= 0:
            return self.text[start:start]
        return self.text[start : self.end_for(start + size)]


class Sizes:
    """Body sizes: fixed, uniform in low..high, log-normal (one of QUANTILES equally likely quantiles, capped at
    the high end), or given quantiles (one of QUANTILES equally likely sizes between them), drawn with the given
    random.Random."""

    def __init__(self, spec: tuple[int, int] | LogNormalSize | QuantileSize, rng: random.Random):
        self.random = rng.random
        self.table: list[int] | None = None
        if isinstance(spec, QuantileSize):
            self.low, self.high = spec.low, spec.high
            self.table = [round(spec.quantile((i + 0.5) / QUANTILES)) for i in range(QUANTILES)]
            self.fixed: int | None = spec.low if spec.low == spec.high else None
        elif isinstance(spec, LogNormalSize):
            self.low, self.high = spec.low, spec.high
            sigma = math.log(spec.p99 / spec.median) / Z99
            normal = NormalDist()
            self.table = [
                min(spec.high, int(spec.median * math.exp(sigma * normal.inv_cdf((i + 0.5) / QUANTILES))))
                for i in range(QUANTILES)
            ]
            self.fixed = spec.median if sigma == 0 else None
        else:
            self.low, self.high = spec
            self.fixed = self.low if self.low == self.high else None

    @property
    def largest(self) -> int:
        return max(self.table) if self.table else self.high

    def draw(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.table is not None:
            return self.table[int(self.random() * QUANTILES)]
        return self.low + int(self.random() * (self.high - self.low + 1))


class Body(NamedTuple):
    """One message's body: which MIME_HEADERS it goes with, its parts in order, and their length."""

    mime: int
    parts: tuple[bytes | memoryview, ...]
    length: int


class Bodies:
    """The bodies of a run: pick(seq) gives message seq's, from precomputed variants when the size is fixed."""

    def __init__(self, kind: str, sizes: Sizes, attachment_share: float, rng: random.Random):
        self.kind = kind
        self.sizes = sizes
        largest = sizes.largest
        self.text = Text(readable_block(rng), largest)
        self.html = Text(html_block(rng), largest) if kind != "text" else None
        self.attachment = Text(base64_block(rng), largest) if kind == "mixed" else None
        # Variant v starts each part at the block's line v: the windows of small bodies stay within the first
        # few kilobytes of each block, so what is sent stays in the CPU's caches (measured: no cost per message).
        self.count = min(VARIANTS, len(self.text.starts))
        share = attachment_share if kind == "mixed" else 0.0
        self.attached = [(v * GOLDEN) % 1.0 < share for v in range(self.count)]
        self.fixed = [self.make(v, sizes.fixed) for v in range(self.count)] if sizes.fixed is not None else None

    def pick(self, seq: int) -> Body:
        variant = seq % self.count
        if self.fixed is not None:
            return self.fixed[variant]
        return self.make(variant, self.sizes.draw())

    def make(self, variant: int, size: int) -> Body:
        """Variant `variant` of a body of at least `size` bytes in all."""
        text = self.text
        text_start = text.starts[variant]
        if self.html is None:
            window = text.window(text_start, size)
            return Body(TEXT, (window,), len(window))
        html = self.html
        html_start = html.starts[variant % len(html.starts)]
        if self.attachment is not None and self.attached[variant]:
            attachment = self.attachment
            head = ATTACHMENT_HEADS[variant % len(ATTACHMENT_HEADS)]
            overhead = len(MIX_OPEN) + len(ALT_MIDDLE) + len(ALT_CLOSE) + len(head) + len(MIX_CLOSE)
            budget = max(0, size - overhead)
            attached = int(budget * ATTACHMENT_SHARE)
            texts = budget - attached
            plain = text.window(text_start, int(texts * TEXT_SHARE))
            marked = html.window(html_start, texts - len(plain))
            data = attachment.window(attachment.starts[variant % len(attachment.starts)], attached)
            parts: tuple[bytes | memoryview, ...] = (
                MIX_OPEN,
                plain,
                ALT_MIDDLE,
                marked,
                ALT_CLOSE,
                head,
                data,
                MIX_CLOSE,
            )
            return Body(MIXED, parts, sum(len(p) for p in parts))
        budget = max(0, size - len(ALT_OPEN) - len(ALT_MIDDLE) - len(ALT_CLOSE))
        plain = text.window(text_start, int(budget * TEXT_SHARE))
        marked = html.window(html_start, budget - len(plain))
        parts = (ALT_OPEN, plain, ALT_MIDDLE, marked, ALT_CLOSE)
        return Body(ALTERNATIVE, parts, sum(len(p) for p in parts))
