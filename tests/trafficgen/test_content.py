"""Content that looks like mail (issue 12): --content text, html and mixed parsed back with the email package, the
attachment decoded, bodies that differ from message to message, and size distributions (fixed, range, log-normal)."""

from __future__ import annotations

import base64
import binascii
import email.policy
import math
import random
import statistics
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from harness.capture import CaptureServer
from harness.mail import split_message
from harness.trafficgen import error_lines, run_report, run_trafficgen
from trafficgen.config import LogNormalSize, build
from trafficgen.content import ATTACHMENTS, LINE_MAX, VARIANTS, Sizes
from trafficgen.messages import MessageFactory

Z_0_001 = 3.2905  # two-sided normal critical value at significance 0.001


def wire(factory: MessageFactory, seq: int) -> bytes:
    return b"".join(bytes(part) for part in factory.build(seq, 0.0).content)


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    for part in message.walk():
        assert not part.defects, part.defects
    return message


def factory(content: str, size: str = "4kb", seed: int = 1, **more: object) -> MessageFactory:
    return MessageFactory(build(content=content, body_size=size, **more), random.Random(seed))  # type: ignore[arg-type]


def check_alternative(part: EmailMessage, empty: bool = False) -> None:
    """A multipart/alternative of a text/plain and a text/html part, both readable (or with `empty`, a body of
    size 0, without text)."""
    assert part.get_content_type() == "multipart/alternative"
    plain, html = part.get_payload()  # type: ignore[misc]
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    marked = html.get_content()
    assert marked.startswith("<!DOCTYPE html>")
    assert marked.rstrip().endswith("</html>")
    if not empty:
        assert plain.get_content().strip()
        assert "." in plain.get_content()
        assert "<p>" in marked


class TestMime:
    """Every message parses back as well-formed MIME with the parts its --content says."""

    def test_text_is_one_plain_part(self):
        """--content text (the default): text/plain, 7bit, readable words."""
        parsed = parse(wire(factory("text"), 3))
        assert parsed.get_content_type() == "text/plain"
        assert not parsed.is_multipart()
        assert parsed["Content-Transfer-Encoding"] == "7bit"

    @pytest.mark.parametrize("size", ["0", "1024", "60kb", "1mb"], ids=lambda s: f"size-{s}")
    def test_html_is_multipart_alternative(self, size):
        """--content html: multipart/alternative, a text/plain then a text/html part, no defects at any size."""
        made = factory("html", size)
        for seq in range(20):
            check_alternative(parse(wire(made, seq)), empty=size == "0")

    def test_mixed_has_attachments_that_decode(self):
        """--content mixed: some messages multipart/mixed (the alternative, then a base64 attachment that decodes
        strictly), the others multipart/alternative."""
        made = factory("mixed", "30kb", attachment_share=50.0)
        kinds = {"multipart/mixed": 0, "multipart/alternative": 0}
        names = set()
        for seq in range(60):
            parsed = parse(wire(made, seq))
            kinds[parsed.get_content_type()] += 1
            if parsed.get_content_type() == "multipart/alternative":
                check_alternative(parsed)
                continue
            alternative, attachment = parsed.get_payload()  # type: ignore[misc]
            check_alternative(alternative)
            assert attachment.get_content_disposition() == "attachment"
            assert attachment["Content-Transfer-Encoding"] == "base64"
            names.add((attachment.get_content_type(), attachment.get_filename()))
            raw = attachment.get_payload(decode=False).replace("\r\n", "").replace("\n", "")
            decoded = base64.b64decode(raw, validate=True)  # strict: a bad character or padding raises
            assert decoded == attachment.get_content()
            assert len(decoded) == len(raw) // 4 * 3 > 10_000
        assert kinds["multipart/mixed"]
        assert kinds["multipart/alternative"]
        assert names <= set(ATTACHMENTS)
        assert len(names) > 1

    @pytest.mark.parametrize("content", ["text", "html", "mixed"])
    def test_lines_are_short_crlf_and_never_start_with_a_dot(self, content):
        """Every line ends in CRLF, holds at most 78 characters, and none needs dot-stuffing."""
        made = factory(content, "20kb", attachment_share=100.0)
        for seq in range(10):
            data = wire(made, seq)
            assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r")
            lines = data[:-2].split(b"\r\n")
            assert max(len(line) for line in lines) <= LINE_MAX
            assert not any(line.startswith(b".") for line in lines)

    def test_bad_base64_would_be_caught(self):
        """The strict decode the attachment test relies on does reject a damaged line (the test can fail)."""
        with pytest.raises(binascii.Error):
            base64.b64decode("QUJD*EFG", validate=True)


class TestVariety:
    """Bodies differ from message to message; per message only an index picks them."""

    @pytest.mark.parametrize("content", ["text", "html", "mixed"])
    def test_consecutive_bodies_differ(self, content):
        """256 consecutive messages of one fixed size have 256 different bodies (not one text's prefix)."""
        made = factory(content, "2kb")
        bodies = [split_message(wire(made, seq))[1] for seq in range(VARIANTS)]
        assert len(set(bodies)) == VARIANTS == 256

    def test_fixed_size_bodies_are_built_once(self):
        """With a fixed size every variant is built at start: message k and k + variants share one body object."""
        made = factory("html", "2kb")
        assert made.bodies is not None
        assert made.bodies.fixed is not None
        count = made.bodies.count
        assert made.bodies.pick(5) is made.bodies.pick(5 + count)

    def test_attachment_share(self):
        """--attachment-share 20: the share of multipart/mixed messages within 0.001 significance of 20%."""
        made = factory("mixed", "1kb", attachment_share=20.0)
        n = 3000
        attached = sum(made.build(seq, 0.0).content[0].find(b"multipart/mixed") >= 0 for seq in range(n))
        p = 0.2
        assert abs(attached - n * p) < Z_0_001 * math.sqrt(n * p * (1 - p)), attached
        assert abs(attached - n * 0.3) > Z_0_001 * math.sqrt(n * 0.3 * 0.7)  # a 30% share would be told apart


class TestSizes:
    """The body holds at least its size (all parts and boundaries together), and sizes follow their distribution."""

    @pytest.mark.parametrize("content", ["text", "html", "mixed"])
    @pytest.mark.parametrize("size", [1024, 60_000, 250_000], ids=lambda s: f"{s}B")
    def test_at_least_the_size(self, content, size):
        """The whole body is at least the size and at most a few lines more (one per part)."""
        made = factory(content, str(size), attachment_share=50.0)
        for seq in range(8):
            body = split_message(wire(made, seq))[1]
            assert size <= len(body) < size + 3 * (LINE_MAX + 2), len(body)

    def test_range_is_uniform(self):
        """10kb..20kb: every size in the range (plus a line); the mean within 0.001 significance of 15kb."""
        made = factory("html", "10kb..20kb")
        sizes = [len(split_message(wire(made, seq))[1]) for seq in range(2000)]
        assert all(10_000 <= s < 20_000 + 3 * (LINE_MAX + 2) for s in sizes)
        sd = 10_000 / math.sqrt(12)
        assert abs(statistics.mean(sizes) - 15_040) < Z_0_001 * sd / math.sqrt(len(sizes)) + 40

    def test_lognormal_median_and_p99(self):
        """median=20kb,p99=2mb: of 40,000 draws (seed 3) the median within 3% of 20 kB, the p99 within 8% of
        2 MB, none above max (20 MB by default), and the sizes spread (a fixed 20 kB would fail)."""
        sizes = Sizes(LogNormalSize(20_000, 2_000_000, 20_000_000), random.Random(3))
        draws = sorted(sizes.draw() for _ in range(40_000))
        median, p99 = draws[len(draws) // 2], draws[int(len(draws) * 0.99)]
        assert abs(median - 20_000) < 0.03 * 20_000, median
        assert abs(p99 - 2_000_000) < 0.08 * 2_000_000, p99
        assert draws[-1] <= 20_000_000
        assert draws[0] < 2_000

    def test_lognormal_max_caps(self):
        """max=300kb caps every draw (median 20kb, p99 200kb), and the cap is reached (the tail is there)."""
        sizes = Sizes(build(body_size="median=20kb,p99=200kb,max=300kb").body_size, random.Random(4))
        draws = [sizes.draw() for _ in range(5000)]
        assert max(draws) == 300_000

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("median=20kb,p99=2mb", LogNormalSize(20_000, 2_000_000, 20_000_000)),
            ("median=20kb, p99=2mb, max=50mb", LogNormalSize(20_000, 2_000_000, 50_000_000)),
            ("lognormal(median=1KiB,p99=1KiB)", LogNormalSize(1024, 1024, 10240)),
        ],
        ids=["default-max", "max", "named"],
    )
    def test_lognormal_parsed(self, text, expected):
        """median=, p99= and max= sizes, in any units --body-size takes."""
        assert build(body_size=text).body_size == expected


class TestOnTheWire:
    """What an aiosmtpd server receives parses back the same way."""

    def test_mixed_run_parses_on_the_server(self):
        """--content mixed --attachment-share 30 with log-normal sizes: every received message parses without
        defects; attachments decode; the report says how the sizes were drawn."""
        with CaptureServer() as server:
            report, _ = run_report(
                "--target", server.target, "--message-count", "60", "--concurrency", "3", "--seed", "5",
                "--content", "mixed", "--attachment-share", "30", "--body-size", "median=10kb,p99=200kb",
            )  # fmt: skip
        assert len(server.messages) == 60
        attached = 0
        for message in server.messages:
            parsed = parse(message.content)
            if parsed.get_content_type() == "multipart/mixed":
                attached += 1
                _, attachment = parsed.get_payload()  # type: ignore[misc]
                assert isinstance(attachment.get_content(), bytes)
            else:
                check_alternative(parsed)
        assert 0 < attached < 60
        assert len({len(m.content) for m in server.messages}) > 50
        config = report["config"]
        assert (config["content"], config["body_size_median"], config["body_size_p99"]) == ("mixed", 10_000, 200_000)


class TestBadInput:
    @pytest.mark.parametrize(
        ("args", "words"),
        [
            (["--content", "pdf"], "--content 'pdf': use one of text, html, mixed"),
            (["--body-size", "median=20kb"], "needs both median= and p99="),
            (["--body-size", "median=2mb,p99=20kb"], "at most the p99"),
            (["--body-size", "median=20kb,p99=2mb,max=1mb"], "max= is below the p99"),
            (["--body-size", "median=20kb,p95=2mb"], "write median=SIZE,p99=SIZE"),
            (["--body-size", "median=20zb,p99=2mb"], "unknown unit 'zb'"),
            (["--attachment-share", "150"], "--attachment-share '150': a percentage is between 0 and 100"),
            (["--content", "html", "--body-file", "pyproject.toml"], "--content shapes generated bodies"),
        ],
        ids=["content", "no-p99", "reversed", "max-below", "unknown-key", "unit", "share", "body-file"],
    )
    def test_one_line_and_exit_2(self, args, words):
        """One line naming the option and the problem, exit 2."""
        done = run_trafficgen(*args)
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done)
        assert line.startswith("trafficgen: error: "), line
        assert words in line, line
