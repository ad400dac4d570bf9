"""The toolkit's error types.

Every error a user can cause (bad file, wrong checkpoint, corrupted payload, unreadable image) is raised as a
subclass of LadonError; command-line entry points print it as one line and exit with code 2.
"""


class LadonError(Exception):
    """Base class of every error caused by user input."""


class CheckpointError(LadonError):
    """A checkpoint file is missing, unsafe, of the wrong architecture or inconsistent with another."""


class BundleError(LadonError):
    """A bundle directory is missing, incomplete, tampered with or of an unsupported format."""


class ExportError(LadonError):
    """An export could not be completed (for example a stage failed its parity check)."""


class PayloadError(LadonError):
    """A payload is truncated, corrupted or was produced for another bundle."""


class ImageError(LadonError):
    """An input image cannot be read or decoded."""


class FrameError(ImageError, ValueError):
    """A numpy frame the device cannot take (not H x W x 3 uint8), or an unknown channel order: a ValueError too,
    as numpy users expect for an argument of the wrong kind."""


class EngineError(LadonError):
    """An engine cannot be built, loaded or run."""
