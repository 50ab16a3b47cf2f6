"""edgecls: take a trained image classifier to real edge boards."""

__version__ = "0.1.0"
