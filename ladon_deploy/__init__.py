"""Deployment toolkit for Ladon, the multi-task supervised compression model for split computing.

    from ladon_deploy import Device, Server
    payload = Device("bundle", tasks="cls,seg").run(frame, channel_order="BGR").payload   # on the device
    document = Server("bundle").run(payload)                                              # on the server

Device and Server import their half on first use (Python 3.6 has no module __getattr__), so importing the package
stays light and never imports the server half, which a Jetson install does not have.

This module is on the edge import path: it stays Python 3.6-clean and imports nothing heavy.
"""

__version__ = "0.1.0"


def Device(bundle_dir, *args, **kwargs):  # noqa: N802 (a factory named as the class it returns)
    """The device half: ladon_deploy.device.api.Device(bundle_dir, tasks=None, engine="onnxruntime", threads=None,
    precision=None, ...); its .run(image, channel_order="RGB") returns a result whose .payload is the bytes to send."""
    from ladon_deploy.device.api import Device as device_class

    return device_class(bundle_dir, *args, **kwargs)


def Server(bundle_dir, *args, **kwargs):  # noqa: N802 (a factory named as the class it returns)
    """The server half: ladon_deploy.server.api.Server(bundle_dir, tasks=None, engine="onnxruntime", threads=None,
    precision=None); its .run(payload) returns the document `ladon-run server --json` prints."""
    try:
        from ladon_deploy.server.api import Server as server_class
    except ImportError as exc:
        if not (getattr(exc, "name", None) or "").startswith("ladon_deploy.server"):
            raise
        raise ImportError("ladon_deploy.Server needs the server half (ladon_deploy.server), which this device "
                          "install does not have: run it on the server")
    return server_class(bundle_dir, *args, **kwargs)
