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


def interpolate_reference(x, out_hw):
    return F.interpolate(torch.from_numpy(x)[None], size=out_hw, mode="bilinear", align_corners=False)[0].numpy()


@pytest.mark.parametrize("in_hw,out_hw", [((360, 360), (415, 415)), ((500, 333), (416, 277)),
                                          ((100, 150), (277, 416)), ((64, 64), (64, 64))])
def test_resize_bilinear_matches_interpolate(in_hw, out_hw):
    x = (np.random.RandomState(1).standard_normal((3,) + in_hw) * 2).astype(np.float32)
    assert np.abs(pp.resize_bilinear(x, *out_hw) - interpolate_reference(x, out_hw)).max() <= TOLERANCE


def test_resize_bilinear_tiny_output_within_one_ulp_of_torch():
    # With a 5x3 output torch's own kernel is not self-consistent: all five output rows come from the single
    # source row with weights (1, 0), yet its last rows differ from the first by 1 ulp (the scalar tail of its
    # vectorized loop rounds differently, by up to one ulp of the inputs). Exactness cannot be asserted against
    # a reference that disagrees with itself, so this case is held to that one-ulp bound.
    x = (np.random.RandomState(1).standard_normal((3, 1, 7)) * 2).astype(np.float32)
    ours, expected = pp.resize_bilinear(x, 5, 3), interpolate_reference(x, (5, 3))
    assert np.abs(expected[:, 3:] - expected[:, :1]).max() > 0, "torch became self-consistent: assert exactness"
    assert np.abs(ours - expected).max() <= np.spacing(np.abs(x).max())


def test_bytes_and_pil_inputs_equal_path(tmp_path):
    path = save(tmp_path, make_rgb(120, 90), "img.png")
    from_path = pp.preprocess(path).tensor
    with open(path, "rb") as handle:
        data = handle.read()
    np.testing.assert_array_equal(pp.preprocess(data).tensor, from_path)
    np.testing.assert_array_equal(pp.preprocess(Image.open(path)).tensor, from_path)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA-opaque"])
def test_other_modes_convert_like_the_reference(tmp_path, mode):
    rgb = Image.fromarray(make_rgb(50, 70))
    if mode == "P":
        image = rgb.quantize(64)
    elif mode == "RGBA-opaque":
        image = rgb.convert("RGBA")  # alpha 255 everywhere: nothing to composite
    else:
        image = rgb.convert(mode)
    path = str(tmp_path / ("img.tiff" if mode == "CMYK" else "img.png"))
    image.save(path)
    expected, _ = reference(Image.open(path).convert("RGB"), 416, pp.POLICY_LONGER_SIDE)
    result = pp.preprocess(path)
    assert np.abs(result.tensor - expected).max() <= TOLERANCE
    assert result.notes == []


def _preprocessed_rgb(rgb_uint8):
    """What preprocess must produce for an image whose correct 8-bit RGB pixels are ``rgb_uint8``."""
    return reference(Image.fromarray(rgb_uint8), 416, pp.POLICY_LONGER_SIDE)[0]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_onto_white(tmp_path, mode):
    colour = make_rgb(50, 70)
    alpha = make_rgb(50, 70, seed=5)[:, :, 0]
    rgba = Image.fromarray(colour).convert(mode if mode == "RGBA" else "L").convert(mode)
    rgba.putalpha(Image.fromarray(alpha))
    path = str(tmp_path / "alpha.png")
    rgba.save(path)
    result = pp.preprocess(path)
    # "over" onto white, computed independently of Pillow: c * a + 255 * (1 - a), rounded.
    loaded = np.asarray(Image.open(path).convert("RGBA")).astype(np.float64)
    a = loaded[:, :, 3:] / 255.0
    composited = np.floor(loaded[:, :, :3] * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
    ours = np.asarray(pp.load_image(path)).astype(int)
    assert np.abs(ours - composited).max() <= 1  # Pillow's integer blend rounds within one level
    assert np.abs(result.tensor - _preprocessed_rgb(np.asarray(pp.load_image(path)))).max() <= TOLERANCE
    # a transparent pixel of any colour comes out white, not its hidden colour
    assert (ours[alpha == 0] == 255).all() and (alpha == 0).any()
    assert result.notes == ["transparent pixels composited onto white"]


def test_palette_transparency_is_composited(tmp_path):
    image = Image.fromarray(make_rgb(40, 60)).quantize(16)
    image.info["transparency"] = 3
    path = str(tmp_path / "palette.png")
    image.save(path, transparency=3)
    index = np.asarray(Image.open(path))
    ours = np.asarray(pp.load_image(path))
    assert (ours[index == 3] == 255).all() and (index == 3).any()


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, mode):
    levels = (make_rgb(50, 70)[:, :, 0].astype(np.uint32) * 257)  # 8-bit levels v stored as 16-bit 257 * v
    image = Image.fromarray(levels.astype(np.uint16)) if mode == "I;16" else Image.fromarray(levels.astype(np.int32))
    assert image.mode == mode
    # Pillow < 10 opens 16-bit PNGs as mode I; today's writes I only to TIFF.
    path = str(tmp_path / ("gray16.png" if mode == "I;16" else "gray32.tiff"))
    image.save(path)
    result = pp.preprocess(path)
    expected_rgb = np.repeat((levels // 257).astype(np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(np.asarray(pp.load_image(path)), expected_rgb)
    assert np.abs(result.tensor - _preprocessed_rgb(expected_rgb)).max() <= TOLERANCE
    assert result.notes == ["16-bit grayscale (%s) scaled to 8 bits" % Image.open(path).mode]


def test_16_bit_rounding_and_range():
    values = np.array([[0, 128, 129, 257, 32767, 65534, 65535]], np.uint16)
    gray = np.asarray(pp.load_image(Image.fromarray(values)))[:, :, 0]
    np.testing.assert_array_equal(gray, [[0, 0, 1, 1, 127, 255, 255]])


def test_animated_gif_uses_first_frame_and_says_so(tmp_path):
    frames = [Image.fromarray(make_rgb(30, 40, seed=k)).quantize(32) for k in range(3)]
    path = str(tmp_path / "anim.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    result = pp.preprocess(path)
    first = Image.open(path).convert("RGB")
    assert np.abs(result.tensor - _preprocessed_rgb(np.asarray(first))).max() <= TOLERANCE
    assert result.notes == ["the first of 3 frames was used"]


def _with_orientation(tmp_path, array, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = str(tmp_path / ("oriented-%d.jpg" % orientation))
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=95)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_exif_transpose(tmp_path, orientation):
    from PIL import ImageOps

    path = _with_orientation(tmp_path, make_rgb(40, 80), orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    result = pp.preprocess(path)
    np.testing.assert_array_equal(np.asarray(pp.load_image(path)), expected)
    assert result.original_size == expected.shape[:2]
    assert np.abs(result.tensor - _preprocessed_rgb(expected)).max() <= TOLERANCE
    if orientation == 1:
        assert result.notes == []
    else:
        assert len(result.notes) == 1 and result.notes[0].startswith("EXIF orientation %d applied" % orientation)
    if orientation == 6:
        assert result.original_size == (80, 40) and "90 degrees clockwise" in result.notes[0]


def test_exif_orientation_can_be_ignored(tmp_path):
    path = _with_orientation(tmp_path, make_rgb(40, 80), 6)
    result = pp.preprocess(path, exif_transpose=False)
    assert result.original_size == (40, 80)
    np.testing.assert_array_equal(np.asarray(pp.load_image(path, exif_transpose=False)),
                                  np.asarray(Image.open(path).convert("RGB")))
    assert result.notes == ["EXIF orientation 6 (rotated 90 degrees clockwise) ignored: the sensor's frame is used"]


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
    huge.write_bytes(png_header_only(100000, 100000))  # beyond twice Pillow's limit: Pillow alone would raise
    assert_one_line_image_error(str(huge), "too large to decode safely under the limit of 89.5 MP")
    warned = tmp_path / "warned.png"
    warned.write_bytes(png_header_only(10000, 10000))  # between 1x and 2x: Pillow alone would only warn
    assert_one_line_image_error(str(warned), "--max-megapixels")
    modest = tmp_path / "modest.png"
    modest.write_bytes(png_header_only(3000, 2000))
    assert_one_line_image_error(str(modest), "6.0 MP, too large", max_pixels=1000000)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own limit is restored after every decode


def test_limit_can_be_raised_above_pillows(tmp_path):
    # A 108 MP header passes a raised limit and fails only on its (fake) pixel data: the size was not refused.
    phone = tmp_path / "phone.png"
    phone.write_bytes(png_header_only(12000, 9000))
    assert_one_line_image_error(str(phone), "cannot decode", max_pixels=120 * 10 ** 6)
    assert_one_line_image_error(str(phone), "cannot decode", max_pixels=None)
    assert Image.MAX_IMAGE_PIXELS == 89478485


def test_real_image_over_pillows_limit_decodes_with_a_raised_limit(tmp_path):
    path = str(tmp_path / "big.png")
    Image.new("L", (9600, 9400), 77).save(path)  # 90.2 MP: Pillow's default would warn, ours refuses
    assert_one_line_image_error(path, "90.2 MP")
    result = pp.preprocess(path, max_pixels=91 * 10 ** 6)
    assert result.original_size == (9400, 9600) and result.tensor.shape == (1, 3, 416, 416)


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


# --- bounded memory, same bits (issue 17) ------------------------------------------------------------------------
# preprocess() now reads the decoded image in bands and rotates/converts only the pixels the resize reads. Its
# output must be bit for bit what the code before that change produced: FROZEN holds sha256 digests of
# (tensor bytes, sizes, notes) computed by that code (ladon_deploy/device/preprocess.py as of 2026-12-04) on the
# lossless files below. JPEG cases are compared with decode_image + preprocess_array (the whole-image path).


def _exif_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _mode_image(mode, height, width, seed):
    rgb = Image.fromarray(make_rgb(height, width, seed=seed))
    if mode == "RGB":
        return rgb
    if mode in ("L", "CMYK", "1", "P"):
        return rgb.convert(mode)
    if mode == "RGBA":
        alpha = Image.fromarray(make_rgb(height, width, seed=seed + 1)[:, :, 0])
        rgba = rgb.convert("RGBA")
        rgba.putalpha(alpha)
        return rgba
    if mode == "LA":
        return _mode_image("RGBA", height, width, seed).convert("LA")
    if mode == "I;16":
        values = make_rgb(height, width, seed=seed).astype(np.uint16)
        return Image.fromarray((values[:, :, 0] * 257 + values[:, :, 1] // 3).astype(np.uint16))
    raise ValueError(mode)


def frozen_cases(directory):
    """(name, path, preprocess kwargs): odd sizes, orientations 1-8, modes, tiny and large, lossless files."""
    cases = []

    def add(name, image, kwargs=None, **save_kwargs):
        path = os.path.join(str(directory), name + (".tif" if image.mode == "CMYK" else ".png"))
        image.save(path, **save_kwargs)
        cases.append((name, path, kwargs or {}))

    for height, width in [(333, 517), (1, 1), (2, 3), (417, 415), (9, 1000), (1000, 9)]:
        add("rgb-%dx%d" % (height, width), _mode_image("RGB", height, width, height + width))
    for orientation in range(1, 9):
        add("orientation-%d" % orientation, _mode_image("RGB", 301, 203, orientation),
            exif=_exif_bytes(orientation))
    add("orientation-6-ignored", _mode_image("RGB", 301, 203, 6), {"exif_transpose": False}, exif=_exif_bytes(6))
    for mode in ("L", "LA", "RGBA", "P", "CMYK", "1", "I;16"):
        add("mode-%s" % mode.replace(";", ""), _mode_image(mode, 257, 389, 11), exif=_exif_bytes(8))
    palette = _mode_image("P", 200, 300, 5)
    add("mode-P-transparency", palette, transparency=int(np.asarray(palette)[0, 0]))
    add("large-1900x2500", _mode_image("RGB", 1900, 2500, 2), {"policy": pp.POLICY_SQUARE}, compress_level=1)
    add("upscale-square-100x150", _mode_image("RGB", 100, 150, 4), {"policy": pp.POLICY_SQUARE, "size": 224})
    return cases


def digest(result):
    import hashlib

    text = repr((result.tensor.shape, result.original_size, result.resized_size, result.notes)).encode()
    return hashlib.sha256(result.tensor.tobytes() + text).hexdigest()[:24]


FROZEN = {
    "rgb-333x517": "700f636612b25ad2801aac73",
    "rgb-1x1": "539e7fcf783525004152aec5",
    "rgb-2x3": "482bb45460dc066dde15206d",
    "rgb-417x415": "465425636eab81696d1f78ee",
    "rgb-9x1000": "d53a00775148931609ffddee",
    "rgb-1000x9": "e219b6acfdd7bf31d4d1d135",
    "orientation-1": "c3b7c75c612fbd1028e2540b",
    "orientation-2": "8bdfb3befb8479d5d562d8e0",
    "orientation-3": "c11ddcaa5e08c1ed9a2c6df0",
    "orientation-4": "e7a74ff18727322f1d146970",
    "orientation-5": "bd8d9351eaab6f253a1b02f6",
    "orientation-6": "803f03539a6acfcfbf8c18be",
    "orientation-7": "c66e6cbb7c061bb4483b9530",
    "orientation-8": "d61e595867bc0e3f985b0cec",
    "orientation-6-ignored": "c742c9250868262fddca05a5",
    "mode-L": "85dee54ba80e37af1eef4087",
    "mode-LA": "8c71a6f61a43e598db3b5e40",
    "mode-RGBA": "7769036df25231baf7f1c794",
    "mode-P": "38ca88e2d1f349765da14ecb",
    "mode-CMYK": "07904856389918735c6878f2",
    "mode-1": "228a81f00be029f4a0c19c55",
    "mode-I16": "6b06806d9f79614bd59997f9",
    "mode-P-transparency": "082a12409b135c18c4059322",
    "large-1900x2500": "99364e02d4cc74af821bdafa",
    "upscale-square-100x150": "ff2543eb188080dcf368188a",
}


@pytest.fixture(scope="module")
def frozen_files(tmp_path_factory):
    return frozen_cases(tmp_path_factory.mktemp("frozen"))


@pytest.mark.parametrize("band_bytes", [pp.BAND_BYTES, 3000], ids=["default-bands", "tiny-bands"])
def test_bit_exact_to_the_code_before_banding(frozen_files, band_bytes, monkeypatch):
    monkeypatch.setattr(pp, "BAND_BYTES", band_bytes)
    assert len(frozen_files) == len(FROZEN)
    for name, path, kwargs in frozen_files:
        assert digest(pp.preprocess(path, **kwargs)) == FROZEN[name], name


def test_banded_path_equals_whole_image_path(frozen_files, monkeypatch):
    """The same on every frozen case against the whole-image path still in the module (decode + full copy)."""
    monkeypatch.setattr(pp, "BAND_BYTES", 5000)
    for name, path, kwargs in frozen_files:
        options = dict(kwargs)
        image, notes = pp.decode_image(path, exif_transpose=options.pop("exif_transpose", True))
        whole = pp.preprocess_array(np.asarray(image), **options)
        whole.notes = notes
        assert digest(pp.preprocess(path, **kwargs)) == digest(whole), name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_orientations_equal_whole_image_path(tmp_path, orientation, monkeypatch):
    monkeypatch.setattr(pp, "BAND_BYTES", 20000)
    path = save(tmp_path, make_rgb(611, 437, seed=orientation), "o.jpg", quality=92, exif=_exif_bytes(orientation))
    image, notes = pp.decode_image(path)
    whole = pp.preprocess_array(np.asarray(image))
    whole.notes = notes
    assert digest(pp.preprocess(path)) == digest(whole)
    assert len(notes) == (orientation != 1)


def test_fast_decode_is_opt_in_and_close(tmp_path):
    path = save(tmp_path, make_rgb(1700, 2300, seed=1), "big.jpg", quality=90)
    exact = pp.preprocess(path)
    fast = pp.preprocess(path, fast_decode=True)
    assert exact.notes == [] and fast.notes == ["fast decode: the JPEG was decoded at 1/4 scale (575x425), "
                                                "not bit-exact"]
    assert fast.tensor.shape == exact.tensor.shape
    assert fast.original_size == exact.original_size == (1700, 2300)
    assert fast.resized_size == exact.resized_size
    difference = np.abs(fast.tensor - exact.tensor)
    assert 0 < difference.mean() < 0.5
    # A lossless file, or a JPEG already at the output's scale, is decoded exactly even when asked to be fast.
    png = save(tmp_path, make_rgb(300, 200, seed=1), "small.png")
    assert digest(pp.preprocess(png, fast_decode=True)) == digest(pp.preprocess(png))
    small = save(tmp_path, make_rgb(416, 300, seed=1), "small.jpg")
    assert digest(pp.preprocess(small, fast_decode=True)) == digest(pp.preprocess(small))
