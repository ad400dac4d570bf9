"""Engine runners with one interface: ONNX Runtime, TensorRT and PyTorch.

On the edge import path: no torch import here, Python 3.6-clean.
"""
