"""bljust: bilevel joint unsupervised and supervised training for speech recognition."""

__version__ = "0.1.0"
