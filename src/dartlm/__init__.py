"""dartlm: distil autoregressive chain-of-thought into silent-thought tokens (DART, arXiv 2506.11752)."""

__version__ = "0.1.0"
