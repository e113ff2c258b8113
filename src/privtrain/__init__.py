"""privtrain: privacy-preserving training platform."""

__version__ = "0.1.0"
