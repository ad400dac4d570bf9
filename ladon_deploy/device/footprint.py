"""What a device process leaves unloaded to keep its peak memory down (docs/device-performance.md).

Python's hashlib loads OpenSSL's libcrypto (3.3 MiB resident on x86-64 Python 3.11) as soon as anything imports
hashlib or hmac, and numpy imports them at start-up (numpy.random -> secrets -> hmac). `ladon-run mobile` needs
only SHA-256 (the bundle's digests) and HMAC-SHA256 (the frame link's tags), which Python's built-in hash modules
compute to the same digests, more slowly (300 MB/s against OpenSSL's 1.7 GB/s here: 2 ms for an encoder). A server
hashes hundreds of MB of heads, so only the device half takes this.

Edge subset: Python 3.6-clean, never imports torch.
"""
import importlib
import sys

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
