"""bulkinfer: offline bulk LLM inference into versioned, looked-up prediction tables."""

__version__ = "0.1.0"
