"""ladon_deploy.device.preprocess against torchvision's own transform, plus its handling of bad images.

torch/torchvision are imported here only to build references; the module under test must not need them.
"""

import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

from ladon_deploy.errors import ImageError
from ladon_deploy.device import preprocess as pp

torch = pytest.importorskip("torch")
F = torch.nn.functional
from torchvision.models.detection.transform import GeneralizedRCNNTransform  # noqa: E402
from torchvision.transforms.functional import to_tensor  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOLERANCE = 0.0  # the README claims bit-exact: max abs difference 0.0


def make_rgb(height, width, seed=0):
    """Seeded noise over gradients: smooth regions and sharp edges both exercise the resize kernel."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = np.stack([255.0 * xx / max(width - 1, 1), 255.0 * yy / max(height - 1, 1),
                     127.5 + 127.5 * np.sin((xx + yy) / 7.0)], axis=-1)
    noise = rng.randint(-60, 61, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def save(tmp_path, array, name, **kwargs):
    path = str(tmp_path / name)
    Image.fromarray(array).save(path, **kwargs)
    return path


def reference(pil_rgb, size, policy):
    """What the evaluated model saw: GeneralizedRCNNTransform (eval, eager) on to_tensor(image)."""
    fixed = (size, size) if policy == pp.POLICY_SQUARE else None
    transform = GeneralizedRCNNTransform(size, size, list(pp.IMAGENET_MEAN), list(pp.IMAGENET_STD),
                                         fixed_size=fixed).eval()
    with torch.no_grad():
        image_list, _ = transform([to_tensor(pil_rgb)])
    return image_list.tensors.numpy(), tuple(int(v) for v in image_list.image_sizes[0])


SHAPES = [(416, 416), (333, 500), (500, 333), (480, 640), (100, 150), (360, 360), (1, 1)]


@pytest.mark.parametrize("policy", [pp.POLICY_LONGER_SIDE, pp.POLICY_SQUARE])
@pytest.mark.parametrize("shape", SHAPES, ids=["%dx%d" % s for s in SHAPES])
def test_matches_torchvision_png(tmp_path, shape, policy):
    path = save(tmp_path, make_rgb(shape[0], shape[1], seed=shape[0] * 7 + shape[1]), "img.png")
    expected, expected_size = reference(Image.open(path).convert("RGB"), 416, policy)

    result = pp.preprocess(path, size=416, policy=policy)

    assert result.tensor.dtype == np.float32
    assert result.tensor.shape == expected.shape
    assert result.resized_size == expected_size
    assert result.original_size == shape
    assert result.padded_size == expected.shape[2:]
    assert np.abs(result.tensor - expected).max() <= TOLERANCE


@pytest.mark.parametrize("policy", [pp.POLICY_LONGER_SIDE, pp.POLICY_SQUARE])
@pytest.mark.parametrize("shape", [(333, 500), (480, 640), (300, 360)])
def test_matches_torchvision_jpeg_at_224(tmp_path, shape, policy):
    path = save(tmp_path, make_rgb(*shape, seed=3), "img.jpg", quality=90)
    expected, expected_size = reference(Image.open(path).convert("RGB"), 224, policy)

    result = pp.preprocess(path, size=224, policy=policy)

    assert result.resized_size == expected_size
    assert result.tensor.shape == expected.shape
    assert np.abs(result.tensor - expected).max() <= TOLERANCE


def test_known_sizes_and_padding(tmp_path):
    result = pp.preprocess_array(make_rgb(333, 500))
    assert result.original_size == (333, 500)
    assert result.resized_size == (277, 416)
    assert result.tensor.shape == (1, 3, 288, 416)
    assert not result.tensor[:, :, 277:, :].any()

    square = pp.preprocess_array(make_rgb(333, 500), policy=pp.POLICY_SQUARE)
    assert square.resized_size == (416, 416) and square.tensor.shape == (1, 3, 416, 416)


def test_long_side_can_be_one_short_like_torchvision():
    # Eager torchvision: int(360 * (416 / 360)) == 415 in double arithmetic; the model saw 415, not 416.
    assert pp.resized_size(360, 360) == (415, 415)
    transform = GeneralizedRCNNTransform(416, 416, [0.0] * 3, [1.0] * 3).eval()
    rng = np.random.RandomState(0)
    for long_side in [23, 45, 46, 90, 165, 360, 369, 500, 562, 640, 1024, 2048]:
        short_side = int(rng.randint(1, long_side + 1))
        for height, width in [(short_side, long_side), (long_side, short_side)]:
            with torch.no_grad():
                image_list, _ = transform([torch.zeros(3, height, width)])
            assert pp.resized_size(height, width) == tuple(image_list.image_sizes[0]), (height, width)


@pytest.mark.parametrize("in_hw,out_hw", [((360, 360), (415, 415)), ((500, 333), (416, 277)),
                                          ((100, 150), (277, 416)), ((1, 7), (5, 3)), ((64, 64), (64, 64))])
def test_resize_bilinear_matches_interpolate(in_hw, out_hw):
    x = (np.random.RandomState(1).standard_normal((3,) + in_hw) * 2).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x)[None], size=out_hw, mode="bilinear", align_corners=False)[0]
    assert np.abs(pp.resize_bilinear(x, *out_hw) - expected.numpy()).max() <= TOLERANCE


def test_bytes_and_pil_inputs_equal_path(tmp_path):
    path = save(tmp_path, make_rgb(120, 90), "img.png")
    from_path = pp.preprocess(path).tensor
    with open(path, "rb") as handle:
        data = handle.read()
    np.testing.assert_array_equal(pp.preprocess(data).tensor, from_path)
    np.testing.assert_array_equal(pp.preprocess(Image.open(path)).tensor, from_path)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16"])
def test_other_modes_convert_like_the_reference(tmp_path, mode):
    rgb = Image.fromarray(make_rgb(50, 70))
    if mode == "P":
        image = rgb.quantize(64)
    elif mode == "I;16":
        # 16-bit grayscale: Pillow's RGB conversion clips at 255 rather than scaling, in both paths alike.
        image = Image.fromarray(make_rgb(50, 70)[:, :, 0].astype(np.uint16) * 3)
    elif mode == "RGBA":
        image = rgb.convert("RGBA")
        image.putalpha(Image.fromarray(make_rgb(50, 70)[:, :, 0]))
    else:
        image = rgb.convert(mode)
    path = str(tmp_path / ("img.tiff" if mode == "CMYK" else "img.png"))
    image.save(path)
    expected, _ = reference(Image.open(path).convert("RGB"), 416, pp.POLICY_LONGER_SIDE)
    assert np.abs(pp.preprocess(path).tensor - expected).max() <= TOLERANCE


def test_exif_orientation_is_not_applied(tmp_path):
    array = make_rgb(40, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(array).save(path, exif=exif.tobytes())
    assert Image.open(path).getexif().get(0x0112) == 6
    assert pp.preprocess(path).original_size == (40, 80)


# --- bad input -------------------------------------------------------------------------------------------------


def png_header_only(width, height):
    """A PNG whose IHDR declares width x height, with a tiny (wrong) IDAT: a decompression-bomb stand-in."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def assert_one_line_image_error(source, match, **kwargs):
    with pytest.raises(ImageError, match=match) as info:
        pp.preprocess(source, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    assert_one_line_image_error(str(tmp_path / "nope.jpg"), "no such file")


def test_directory(tmp_path):
    assert_one_line_image_error(str(tmp_path), "directory")


def test_zero_byte_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert_one_line_image_error(str(path), "empty")
    assert_one_line_image_error(b"", "empty")


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 10)
    assert_one_line_image_error(str(path), "not a readable image")


def test_truncated_jpeg(tmp_path):
    path = save(tmp_path, make_rgb(200, 300), "full.jpg", quality=95)
    with open(path, "rb") as handle:
        data = handle.read()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert_one_line_image_error(str(cut), "truncated")
    assert_one_line_image_error(data[: len(data) // 2], "truncated")


def test_corrupt_png_data(tmp_path):
    path = tmp_path / "bad.png"
    path.write_bytes(png_header_only(64, 64))
    assert_one_line_image_error(str(path), "cannot decode")


def test_decompression_bombs(tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(100000, 100000))  # beyond twice Pillow's limit: Pillow raises
    assert_one_line_image_error(str(huge), "too large")
    warned = tmp_path / "warned.png"
    warned.write_bytes(png_header_only(10000, 10000))  # between 1x and 2x: Pillow only warns
    assert_one_line_image_error(str(warned), "too large")
    modest = tmp_path / "modest.png"
    modest.write_bytes(png_header_only(3000, 2000))
    assert_one_line_image_error(str(modest), "more than the limit", max_pixels=1000000)


def test_elongated_image_and_bad_arrays():
    with pytest.raises(ImageError, match="elongated"):
        pp.preprocess_array(np.zeros((1, 2000, 3), np.uint8))
    with pytest.raises(ImageError, match="RGB uint8"):
        pp.preprocess_array(np.zeros((10, 10), np.uint8))
    with pytest.raises(ImageError, match="RGB uint8"):
        pp.preprocess_array(np.zeros((10, 10, 3), np.float32))


def test_bad_parameters():
    with pytest.raises(ValueError, match="policy"):
        pp.preprocess_array(make_rgb(10, 10), policy="stretch")
    with pytest.raises(ValueError, match="size"):
        pp.preprocess_array(make_rgb(10, 10), size=0)


# --- edge constraints ------------------------------------------------------------------------------------------


NO_TORCH_SCRIPT = textwrap.dedent("""
    import sys

    class BlockTorch(object):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker did not work")

    import numpy as np
    from PIL import Image
    from ladon_deploy.server import postprocess
    from ladon_deploy.device import preprocess

    path = sys.argv[1]
    result = preprocess.preprocess(path)
    assert result.tensor.shape == (1, 3, 288, 416), result.tensor.shape
    square = preprocess.preprocess(open(path, "rb").read(), size=224, policy="square")
    assert square.tensor.shape == (1, 3, 224, 224)
    top = postprocess.top_classes(np.full((1, 1000), 1e-3, np.float32), k=3)
    assert top[0].name == "tench"
    mask = postprocess.segmentation_mask(np.zeros((1, 21, 288, 416), np.float32), result.original_size,
                                         result.resized_size)
    assert mask.shape == result.original_size
    assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")]
    print("ok")
""")


def test_runs_without_torch(tmp_path):
    path = save(tmp_path, make_rgb(333, 500), "img.png")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, path], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
