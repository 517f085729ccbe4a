"""trafficgen: a weighted SMTP traffic generator with reports people can trust.

Programmatic use mirrors the command line: `trafficgen.run(trafficgen.config.build(...))`.
"""

__version__ = "0.1.0"
