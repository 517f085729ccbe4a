"""Fixtures every test folder may use. The harness itself (sinks, trafficgen, the capture server...) is the
`harness` package beside this file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.policies import ACCEPT_ALL
from harness.sink import SinkProcess, running_sink


@pytest.fixture
def accept_all_sink(tmp_path: Path) -> Iterator[SinkProcess]:
    with running_sink(policy=ACCEPT_ALL, tmp=tmp_path) as sink:
        yield sink
