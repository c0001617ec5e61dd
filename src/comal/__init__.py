"""comal: aligning language models with general preferences by finding the Nash policy."""

__version__ = "0.1.0"
