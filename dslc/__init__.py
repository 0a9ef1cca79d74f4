"""dslc: a declarative language for neural networks, compiled to PyTorch and ONNX."""

__version__ = "0.1.0"
