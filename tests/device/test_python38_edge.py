"""The device path on JetPack 5.1's Python stack: Python 3.8, numpy 1.24.4, Pillow 10.4.0, onnxruntime 1.19.2.

setup.sh builds .venv38 from requirements/jetpack-5.1.txt where a Python 3.8 interpreter exists. This test installs
exactly what Dockerfile.jetson installs (its COPY instructions and its gcc line, read from the Dockerfile), imports
every module of that file set on Python 3.8 (no torch exists there), and runs `ladon-run mobile`: the payload must
be byte-identical to the one this interpreter produces, and the image notes must be those of Pillow 13 here. The
server half, which needs Python 3.8 too (requires-python), runs there from the whole package. (x86_64 here; the
Jetson's aarch64 build, TensorRT and pycuda are not executed.)
"""
import json
import os
import shutil
import subprocess

import pytest

import edge_install
from ladon_deploy.cli_support import run_command
from ladon_deploy.runtime.cli import PROG, main
from images import make_image

PYTHON38 = os.path.join(edge_install.ROOT, ".venv38", "bin", "python")

IMPORT_ALL = """
import os, sys, importlib
root = sys.argv[1]
names = []
for directory, _, files in os.walk(os.path.join(root, "ladon_deploy")):
    for name in sorted(files):
        if name.endswith(".py"):
            relative = os.path.relpath(os.path.join(directory, name), root)[:-3]
            names.append(relative.replace(os.sep, ".").replace(".__init__", ""))
for name in sorted(names):
    importlib.import_module(name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "compressai", "onnx"))
assert not heavy, heavy
print(len(names))
"""


def _run38(argv, package, cwd):
    env = dict(os.environ, PYTHONPATH=str(package))
    return subprocess.run([PYTHON38] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=env, cwd=str(cwd), timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PYTHON38), reason="no .venv38 (setup.sh found no Python 3.8 interpreter)")
def test_container_file_set_runs_on_python38_with_identical_payload(demo_bundle, tmp_path):
    edge = edge_install.install_edge(tmp_path / "edge", PYTHON38)
    versions = _run38(["-c", "import sys, numpy, PIL, onnxruntime; "
                             "from ladon_deploy.device.entropy import default_backend; "
                             "print('%d.%d' % sys.version_info[:2], numpy.__version__, PIL.__version__, "
                             "onnxruntime.__version__, default_backend())"], edge, tmp_path)
    assert versions.returncode == 0, versions.stderr
    pins = edge_install.pinned("requirements/jetpack-5.1.txt")
    assert versions.stdout.split() == ["3.8", pins["numpy"], pins["pillow"], pins["onnxruntime"], "native"]

    imported = _run38(["-c", IMPORT_ALL, edge], edge, tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert int(imported.stdout) >= 10  # the whole copied file set imports without torch or the server half
    # The device bench's encoder GMAC, from the container's file set without onnx: the figure ladon-export recorded
    # in the manifest, equal to what ladon_deploy.gmac counts here (not n/a).
    from ladon_deploy.gmac import count_gmac

    gmac = _run38(["-c", "import sys; from ladon_deploy.bench.device_bench import encoder_gmac; "
                         "from ladon_deploy.bundle import open_bundle; "
                         "print(repr(encoder_gmac(open_bundle(sys.argv[1]), [1, 3, 288, 416])))", demo_bundle],
                  edge, tmp_path)
    assert gmac.returncode == 0, gmac.stderr
    assert float(gmac.stdout) == count_gmac(os.path.join(demo_bundle, "encoder.onnx"),
                                            {"image": (1, 3, 288, 416)}).total_gmac

    image = make_image(tmp_path / "street.png", 333, 500, 38)
    edge_payload = tmp_path / "edge.ldn"
    mobile = _run38(["-m", "ladon_deploy.runtime.cli", "mobile", "--bundle", demo_bundle, "--image", image,
                     "--out", str(edge_payload)], edge, tmp_path)
    assert mobile.returncode == 0, mobile.stderr
    here_payload = tmp_path / "here.ldn"
    assert run_command(PROG, main, ["mobile", "--bundle", demo_bundle, "--image", image, "--out",
                                    str(here_payload)]) == 0
    assert edge_payload.read_bytes() == here_payload.read_bytes()

    # Pillow 10.4's EXIF and alpha handling gives the same pixels and notes as this interpreter's Pillow.
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 8
    photo = str(tmp_path / "phone.png")
    rgba = Image.open(image).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    rgba.save(photo, exif=exif.tobytes())
    outputs = {}
    for side, run in (("edge", lambda argv: _run38(["-m", "ladon_deploy.runtime.cli"] + argv, edge, tmp_path)),
                      ("here", None)):
        out = tmp_path / ("%s-photo.ldn" % side)
        argv = ["mobile", "--bundle", demo_bundle, "--image", photo, "--out", str(out), "--json"]
        if run is None:
            assert run_command(PROG, main, argv) == 0
            continue
        result = run(argv)
        assert result.returncode == 0, result.stderr
        outputs[side] = json.loads(result.stdout)["image_notes"]
    assert outputs["edge"] == ["transparent pixels composited onto white",
                               "EXIF orientation 8 applied: rotated 90 degrees counter-clockwise to the frame "
                               "viewers show"]
    assert (tmp_path / "edge-photo.ldn").read_bytes() == (tmp_path / "here-photo.ldn").read_bytes()

    # The server half is not in the container: asking for it there is one line, exit 2.
    refused = _run38(["-m", "ladon_deploy.runtime.cli", "server", "--bundle", demo_bundle, "--payload",
                      str(edge_payload)], edge, tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "need the server half" in refused.stderr
    # On Python 3.8 with the whole package, the server half serves the 3.8 payload.
    full = tmp_path / "full"
    shutil.copytree(os.path.join(edge_install.ROOT, "ladon_deploy"), str(full / "ladon_deploy"),
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    edge_install.compile_coder(full, PYTHON38)
    server = _run38(["-m", "ladon_deploy.runtime.cli", "server", "--bundle", demo_bundle, "--payload",
                     str(edge_payload), "--json", "--tasks", "cls,seg"], full, tmp_path)
    assert server.returncode == 0, server.stderr
    document = json.loads(server.stdout)
    assert document["original_size"] == {"height": 333, "width": 500} and len(document["classification"]["top_k"]) == 5
