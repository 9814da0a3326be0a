"""cir: composed image retrieval with Slerp and Text-Anchored Tuning (TAT)."""

__version__ = "0.1.0"
