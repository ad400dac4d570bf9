"""Real photographs for calibration tests: the ones scikit-image's and matplotlib's wheels ship (nothing downloads)."""
import pytest


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """A folder of real photographs (17 with the pinned packages), plus a README that must be ignored."""
    pytest.importorskip("skimage")
    from ladon_deploy.calibration.samples import copy_sample_photos

    directory = tmp_path_factory.mktemp("photos")
    assert len(copy_sample_photos(str(directory))) >= 12
    (directory / "README.txt").write_text("not an image")
    return str(directory)
