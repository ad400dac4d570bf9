"""Ladon and baseline models, and safe checkpoint loading (torch side only)."""
