"""hypermeta: hypernetworks and meta-learning as one reproducible pipeline.

The layers and what may import what: docs/ARCHITECTURE.md."""

__version__ = "0.1.0"
