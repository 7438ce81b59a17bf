"""LongCat: a self-hostable LLM API platform."""

__version__ = "0.1.0"
