"""trafficgen: a weighted SMTP traffic generator with reports people can trust.

Programmatic use mirrors the command line: `trafficgen.run(trafficgen.config.build(target=..., ...))` runs to the
end and returns the report (a dict, docs/report.md) and how the run ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trafficgen.version import __version__ as __version__

if TYPE_CHECKING:
    from trafficgen.config import RunConfig
    from trafficgen.launch import Result


def run(config: RunConfig) -> Result:
    """Run to the end and return the report (the programmatic face of the trafficgen command)."""
    from trafficgen.launch import run as run_config

    return run_config(config)
