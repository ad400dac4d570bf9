"""INT8 calibration: calibration images, INT8 / QDQ models, TensorRT calibration caches and the fidelity report.

The edge half (data.py, cache.py, trt_calibrator.py) runs on the device's builder: Python 3.6-clean, numpy and the
standard library only, never torch. int8.py and fidelity.py need onnx and onnxruntime.quantization (Python 3.8+) but
never torch either, so an INT8 build also runs on a Xavier NX.
"""
