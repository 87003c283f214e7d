"""ltlib: a reproducible companion to four papers on long-tailed image recognition."""
__version__ = "0.1.0"
