"""edge_runtime: classify images with a TFLite model, without TensorFlow.

Import the parts you need from their modules (`edge_runtime.classify`, `edge_runtime.preprocess`, ...);
this package imports nothing heavy on its own.
"""

__version__ = "0.1.0"
