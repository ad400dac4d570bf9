"""The split runtime: mobile stage, entropy coder, wire format, link and server stage.

On the edge import path: no torch import here, Python 3.6-clean.
"""
