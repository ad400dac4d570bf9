"""What a device process leaves unloaded to keep its peak memory down (docs/device-performance.md).

Python's hashlib loads OpenSSL's libcrypto (3.3 MiB resident on x86-64 Python 3.11) as soon as anything imports
hashlib or hmac, and numpy imports them at start-up (numpy.random -> secrets -> hmac). `ladon-run mobile` needs
only SHA-256 (the bundle's digests) and HMAC-SHA256 (the frame link's tags), which Python's built-in hash modules
compute to the same digests, more slowly (300 MB/s against OpenSSL's 1.7 GB/s here: 2 ms for an encoder). A server
hashes hundreds of MB of heads, so only the device half takes this.

numpy 1.x imports numpy.random, numpy.ma and numpy.polynomial at start-up, which the device half never uses (5.3 MiB
resident on numpy 1.26 / Python 3.11). They are deferred instead: each is imported on first use, as Python's
LazyLoader does it, so code that does use them (the link's erasure code draws from numpy.random) still gets them.

Edge subset: Python 3.6-clean, never imports torch.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any, Optional, Sequence

# numpy's subpackages that its __init__ imports and the device half never touches.
DEFERRED_NUMPY_MODULES = ("numpy.random", "numpy.ma", "numpy.polynomial")

# Python's own SHA-256, by its name in each version: _sha256 up to 3.11, _sha2 from 3.12.
BUILTIN_SHA256_MODULES = ("_sha256", "_sha2")


def use_builtin_hashes() -> bool:
    """Makes hashlib and hmac use Python's built-in hash modules instead of OpenSSL's, for the rest of the process.

    Must run before anything imports hashlib or hmac (numpy does); returns whether it took effect: False when they
    were already imported (they keep OpenSSL) or when this Python lacks the built-in SHA-256 (hashlib then needs
    OpenSSL). An ssl import later still loads libcrypto for itself: only a process that speaks HTTPS pays for it.
    """
    if "_hashlib" in sys.modules or "hashlib" in sys.modules or "hmac" in sys.modules:
        return False
    for name in BUILTIN_SHA256_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        sys.modules["_hashlib"] = None  # import _hashlib now raises ImportError: hashlib falls back to the built-ins
        return True
    return False


class _DeferredImports(importlib.abc.MetaPathFinder):
    """Finds the named modules where Python would, but wraps their loaders in LazyLoader: the module object exists
    at once and runs its code on the first attribute read."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Optional[Sequence[str]], target: Any = None) -> Any:
        if name not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def defer_unused_numpy_modules() -> bool:
    """Makes numpy's start-up leave DEFERRED_NUMPY_MODULES unexecuted until something reads from them.

    Must run before numpy is imported; returns whether it took effect (False when numpy was already imported).
    """
    if "numpy" in sys.modules:
        return False
    if not any(isinstance(finder, _DeferredImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferredImports(DEFERRED_NUMPY_MODULES))
    return True


def slim_device_process() -> None:
    """What `ladon-run mobile` leaves out of its process, before anything imports numpy: OpenSSL and numpy's unused
    subpackages."""
    use_builtin_hashes()
    defer_unused_numpy_modules()
