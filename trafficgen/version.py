"""trafficgen's version, apart from the package's face (trafficgen.run), so the modules that print it import no
more than this."""

__version__ = "0.1.0"
