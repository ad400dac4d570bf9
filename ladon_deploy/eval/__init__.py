"""`ladon-eval`: task accuracy and bits per image of the deployed split pipeline on standard datasets.

datasets (ImageNet, COCO, VOC layouts and the authors' evaluation views), metrics (top-k, COCO mAP, mIoU), run (the
device stage -> payload bytes -> server stage loop, journalled), report (rate-accuracy plots, tables, curve
differences), gate (an INT8/FP16 build's accuracy against FP32's). Sits above device/, server/ and engines/.
"""
