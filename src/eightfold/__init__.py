"""eightfold: scaling studies of synthetic data for LLM math reasoning."""

__version__ = "0.1.0"
