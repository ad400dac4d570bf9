"""Splitting Ladon at the bottleneck into ONNX stages, the bundle on disk and its manifest.

Bundle reading (export.bundle) is on the edge import path: this file must stay free of torch imports.
"""
