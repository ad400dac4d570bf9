"""Splitting Ladon at the bottleneck into ONNX stages, the parity check, and writing bundles (ladon_deploy.bundle)."""
