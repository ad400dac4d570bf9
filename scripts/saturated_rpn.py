"""Exports a checkpoint set with a saturated RPN and prints the detection parity the export measured.

The set is the tests' sc2bench trio (tests/sc2bench_models.py, random weights) with RPN objectness logits scaled and
shifted so that many anchors have sigmoid exactly 1.0 in float32. `--head torchvision` exports torchvision's head
as it is (what the export did before the ranked head) to show what ties do to it; the default exports the ranked head.

    python scripts/saturated_rpn.py --scale 1000 --shift 0 --head torchvision    # fails: one detection replaced
    python scripts/saturated_rpn.py --scale 1000 --shift 20                      # passes
"""
import argparse
import copy
import os
import sys
import tempfile
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from ladon_deploy.errors import ExportError  # noqa: E402
from ladon_deploy.export import pipeline, stages  # noqa: E402
from ladon_deploy.models.checkpoint import load_ladon  # noqa: E402
from sc2bench_models import build_shared_trio, save_trio, widen_class_logits  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1000.0, help="factor on the RPN objectness weights")
    parser.add_argument("--shift", type=float, default=0.0, help="added to the RPN objectness bias")
    parser.add_argument("--head", choices=("ranked", "torchvision"), default="ranked")
    args = parser.parse_args()
    cls_model, det_model, seg_model = build_shared_trio(seed=3)
    det_model = copy.deepcopy(det_model)
    widen_class_logits(det_model)
    with torch.no_grad():
        det_model.rpn.head.cls_logits.weight.mul_(args.scale)
        det_model.rpn.head.cls_logits.bias.add_(args.shift)
    if args.head == "torchvision":
        stages.ranked_head = lambda head: head
    with tempfile.TemporaryDirectory() as directory:
        model = load_ladon(save_trio(cls_model, det_model, seg_model, __import__("pathlib").Path(directory))).model
        probe = pipeline.StageInputs(model.eval(), 416, 416, 0)
        with torch.no_grad():
            pyramid = model.detection.fpn(OrderedDict(zip("1234", probe.features)))
            logits = torch.cat([o.flatten() for o in model.detection.rpn.head(list(pyramid.values()))[0]])
        print("RPN at 416x416: %d anchors, %d with sigmoid exactly 1.0 (float32), largest logit %.1f"
              % (logits.numel(), int((torch.sigmoid(logits) == 1.0).sum()), float(logits.max())))
        try:
            manifest = pipeline.export_bundle(model, os.path.join(directory, "bundle"))
        except ExportError as exc:
            print("%s head: export refused: %s" % (args.head, exc))
            return 1
    check = manifest["parity"]["head_det"]
    print("%s head: export passed; head_det %d/%d matched, %d replaced, %d missing, %d extra, largest box error %.2g px, "
          "largest score error %.2g" % (args.head, check["matched"], check["detections_reference"], check["replaced"],
                                        check["missing"], check["extra"], check["max_box_error_px"],
                                        check["max_score_error"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
