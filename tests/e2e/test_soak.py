"""`python -m bench.soak` (make soak), run short: it starts a sink, drives normal and hostile clients, prints its
table of samples and a verdict, and exits 0 on a sink that neither leaks nor stops serving."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from harness import ROOT, child_env


@pytest.mark.slow
def test_short_soak_completes_with_its_table():
    """Half a minute sampled every 3 s: a header, 11 rows, every connection given back, OK."""
    soak = subprocess.Popen(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.5", "--interval", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),  # the tools it starts see none of the test run's TRAFFICGEN_* and SMARTSINK_* variables
        cwd=ROOT,
    )
    try:
        out, err = soak.communicate(timeout=180)  # 30 s of soak, then up to --timeout + 5 s for the connections
    finally:
        if soak.poll() is None:
            soak.terminate()  # it stops its sink and trafficgen on the way out
            soak.communicate(timeout=30)
    assert soak.returncode == 0, out + err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["t", "(s)", "RSS"])
    rows = [line for line in lines[header + 1 :] if re.fullmatch(r"\s*\d+( +[\d.,]+){5}", line)]
    assert len(rows) == 11, out
    assert "every connection given back" in out
    assert lines[-1].startswith("OK:")
