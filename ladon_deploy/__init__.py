"""Deployment toolkit for Ladon, the multi-task supervised compression model for split computing.

This module is on the edge import path: it stays Python 3.6-clean and imports nothing heavy.
"""

__version__ = "0.1.0"
