"""The tiny classification bundle of the engine tests, for the evaluation tests."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "engines"))


@pytest.fixture(scope="session")
def tiny_cls_bundle(tmp_path_factory):
    from tiny_bundle import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle")
