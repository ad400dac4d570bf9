"""INT8 calibration data, QDQ models and TensorRT calibration caches."""
