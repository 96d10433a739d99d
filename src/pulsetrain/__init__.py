"""pulsetrain: train-by-train data analysis for pulsed X-ray facilities."""

__version__ = "0.1.0"
