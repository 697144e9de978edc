"""Run inside deface's own environment: the regions deface 1.5.0 obscures, per frame.

Uses deface's own detector and box scaling with its command-line defaults
(threshold 0.2, mask scale 1.3, full resolution), on frames read with OpenCV,
and prints one JSON line per frame: {"index", "masked_whole", "boxes"}.
"""

import json
import sys

import cv2
from deface.centerface import CenterFace
from deface.deface import scale_bb

THRESHOLD, MASK_SCALE = 0.2, 1.3


def main(path: str) -> None:
    detector = CenterFace(in_shape=None, backend="auto")
    capture = cv2.VideoCapture(path)
    index = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        dets, _ = detector(frame, threshold=THRESHOLD)
        boxes = []
        for det in dets:
            x1, y1, x2, y2 = scale_bb(*det[:4].astype(int), MASK_SCALE)
            y1, y2 = max(0, y1), min(frame.shape[0] - 1, y2)
            x1, x2 = max(0, x1), min(frame.shape[1] - 1, x2)
            boxes.append([int(x1), int(y1), int(x2), int(y2)])
        print(json.dumps({"index": index, "masked_whole": False, "boxes": boxes}))
        index += 1


if __name__ == "__main__":
    main(sys.argv[1])
