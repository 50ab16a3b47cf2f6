"""Export a PyTorch classifier to other runtimes' formats (TFLite/LiteRT via the `tflite` extra)."""

from edgecls.export.tflite import TfliteResult, export_tflite, run_tflite

__all__ = ["TfliteResult", "export_tflite", "run_tflite"]
