"""dynanoise: an inference service that defends ONNX classifiers against membership
inference with DynaNoise, and the toolkit that audits it."""

__version__ = "0.1.0"
