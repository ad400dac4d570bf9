"""What the Python-backend steps share: reading their config and turning failures into Triton errors."""
import json
import os
from typing import Any, Dict

def model_parameters(args: Dict[str, Any]) -> Dict[str, str]:
    """The string parameters of the model's config.pbtxt."""
    config = json.loads(args["model_config"])
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def version_directory(args: Dict[str, Any]) -> str:
    return os.path.join(args["model_repository"], str(args["model_version"]))


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def refusal(pb_utils: Any, exc: BaseException) -> Any:
    """A TritonError for input the toolkit refuses: HTTP 400 with the one-line reason (INTERNAL would say 500)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    if code is None:  # Python backends before 23.04 take no error code
        return pb_utils.TritonError(first_line(exc))
    return pb_utils.TritonError(first_line(exc), code)
