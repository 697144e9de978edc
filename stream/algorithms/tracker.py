"""A ByteTrack-style multi-object tracker for faces, as a pure state machine.

Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every
Detection Box" (ECCV 2022): a constant-velocity Kalman filter per track and a
two-stage association, confident detections first against every track, then
low-score detections against the tracks still unmatched, which keeps faces
through blur and partial occlusion. For privacy, a lost track keeps being
reported (coasting) at its predicted position for ``coast_frames`` frames,
with a margin that grows while it coasts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment

from stream.config import TrackConfig
from stream.frames import Detections, Tracks

_STD_POSITION = 1.0 / 20
_STD_VELOCITY = 1.0 / 160


class KalmanBoxFilter:
    """Constant-velocity Kalman filter over ``(cx, cy, w, h)`` and their velocities.

    Noise scales with the box size, as in ByteTrack / BoT-SORT.
    """

    def __init__(self, box: NDArray[np.float32]) -> None:
        z = _xyxy_to_cxcywh(box)
        self.x = np.concatenate([z, np.zeros(4)])
        size = np.array([z[2], z[3], z[2], z[3]])
        std = np.concatenate([2 * _STD_POSITION * size, 10 * _STD_VELOCITY * size])
        self.p = np.diag(std**2)

    _F = np.eye(8) + np.eye(8, k=4)
    _H = np.eye(4, 8)

    def predict(self) -> None:
        size = np.array([self.x[2], self.x[3], self.x[2], self.x[3]])
        q = np.diag(np.concatenate([_STD_POSITION * size, _STD_VELOCITY * size]) ** 2)
        self.x = self._F @ self.x
        self.p = self._F @ self.p @ self._F.T + q
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)

    def update(self, box: NDArray[np.float32]) -> None:
        z = _xyxy_to_cxcywh(box)
        size = np.array([self.x[2], self.x[3], self.x[2], self.x[3]])
        r = np.diag((_STD_POSITION * size) ** 2)
        s = self._H @ self.p @ self._H.T + r
        k = np.linalg.solve(s, self._H @ self.p).T
        self.x = self.x + k @ (z - self._H @ self.x)
        self.p = (np.eye(8) - k @ self._H) @ self.p

    def box(self) -> NDArray[np.float32]:
        cx, cy, w, h = self.x[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


def predict_all(filters: list[KalmanBoxFilter]) -> None:
    """``predict`` on every filter at once (a crowd holds hundreds of tracks)."""
    if not filters:
        return
    x, p = np.stack([f.x for f in filters]), np.stack([f.p for f in filters])
    size = x[:, [2, 3, 2, 3]]
    q = np.concatenate([_STD_POSITION * size, _STD_VELOCITY * size], axis=1) ** 2
    f = KalmanBoxFilter._F
    x = x @ f.T
    p = f @ p @ f.T
    p[:, np.arange(8), np.arange(8)] += q
    x[:, 2:4] = np.maximum(x[:, 2:4], 1.0)
    for one, xi, pi in zip(filters, x, p, strict=True):
        one.x, one.p = xi, pi


def update_all(filters: list[KalmanBoxFilter], boxes: list[NDArray[np.float32]]) -> None:
    """``update`` of each filter with its box ``(4,)`` xyxy, all at once."""
    if not filters:
        return
    x, p = np.stack([f.x for f in filters]), np.stack([f.p for f in filters])
    z = np.stack([_xyxy_to_cxcywh(b) for b in boxes])
    size = x[:, [2, 3, 2, 3]]
    hp = p[:, :4, :]  # H P, as H picks the first four states
    s = hp[:, :, :4] + np.eye(4) * ((_STD_POSITION * size) ** 2)[:, None, :]
    k = np.linalg.solve(s, hp).transpose(0, 2, 1)  # (N, 8, 4)
    x = x + (k @ (z - x[:, :4])[:, :, None])[:, :, 0]
    p = p - k @ hp
    for one, xi, pi in zip(filters, x, p, strict=True):
        one.x, one.p = xi, pi


def _xyxy_to_cxcywh(box: NDArray[np.float32]) -> NDArray[np.float64]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])


def iou_matrix(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    """Pairwise IoU of boxes ``a`` ``(N, 4)`` and ``b`` ``(M, 4)`` -> ``(N, M)``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return (inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)).astype(np.float32)


def _associate(
    track_boxes: NDArray[np.float32], det_boxes: NDArray[np.float32], min_iou: float
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Optimal one-to-one matching by IoU; pairs below ``min_iou`` stay unmatched."""
    iou = iou_matrix(track_boxes, det_boxes)
    pairs: list[tuple[int, int]] = []
    if iou.size:
        rows, cols = linear_sum_assignment(-iou)
        pairs = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]
    matched_t = {t for t, _ in pairs}
    matched_d = {d for _, d in pairs}
    return (
        pairs,
        [t for t in range(len(track_boxes)) if t not in matched_t],
        [d for d in range(len(det_boxes)) if d not in matched_d],
    )


@dataclass
class _Track:
    track_id: int
    filter: KalmanBoxFilter
    last_box: NDArray[np.float32]
    lost_for: int = 0
    detection: int = -1  # index of the detection matched in the current frame


class FaceTracker:
    """ByteTrack over face detections; ``update`` once per frame, in frame order.

    Track IDs count from 1 per tracker instance.
    """

    def __init__(self, config: TrackConfig) -> None:
        self.config = config
        self._tracks: list[_Track] = []
        self._next_id = 1

    def reset(self) -> None:
        self._tracks = []
        self._next_id = 1

    def update(self, detections: Detections | None, precise: bool = True) -> Tracks:
        """Advance one frame. ``None`` means the detector did not run on this
        frame: every track coasts on its prediction. ``precise=False`` marks
        detections of a reduced-resolution pass: a track they match reports
        the box enclosing both the detection and its prediction."""
        cfg = self.config
        predict_all([track.filter for track in self._tracks])
        for track in self._tracks:
            track.detection = -1
        if detections is None:
            detections = Detections.empty()
        matched = self._match(detections, precise)
        alive = []
        for track in self._tracks:
            if id(track) not in matched:
                track.lost_for += 1
            if track.lost_for <= cfg.coast_frames:
                alive.append(track)
        self._tracks = alive
        return self._report()

    def _match(self, detections: Detections, precise: bool) -> set[int]:
        cfg = self.config
        high = np.flatnonzero(detections.confidence >= cfg.high_threshold)
        low = np.flatnonzero(detections.confidence < cfg.high_threshold)
        predicted = np.array([t.filter.box() for t in self._tracks], np.float32).reshape(-1, 4)
        matched: set[int] = set()

        hits: list[tuple[int, int]] = []  # (track row, detection index)
        pairs, free_tracks, free_high = _associate(predicted, detections.xyxy[high], cfg.match_iou)
        hits += [(t, int(high[d])) for t, d in pairs]

        # Second stage: low-score boxes only extend tracks seen within the last
        # two frames (one may have had a reduced-resolution pass that missed it).
        recent = [t for t in free_tracks if self._tracks[t].lost_for <= 1]
        pairs, _, _ = _associate(predicted[recent], detections.xyxy[low], cfg.low_match_iou)
        hits += [(recent[t], int(low[d])) for t, d in pairs]
        update_all([self._tracks[t].filter for t, _ in hits], [detections.xyxy[d] for _, d in hits])
        for t, d in hits:
            self._hit(self._tracks[t], detections.xyxy[d], predicted[t], precise, d)
            matched.add(id(self._tracks[t]))

        for d in free_high:
            if detections.confidence[high[d]] >= cfg.new_track_threshold:
                box = detections.xyxy[high[d]]
                track = _Track(self._next_id, KalmanBoxFilter(box), box.copy(), detection=int(high[d]))
                self._next_id += 1
                self._tracks.append(track)
                matched.add(id(track))
        return matched

    @staticmethod
    def _hit(
        track: _Track, box: NDArray[np.float32], predicted: NDArray[np.float32], precise: bool, detection: int
    ) -> None:
        """A track matched ``box`` (its filter already updated with it)."""
        if precise:
            track.last_box = box.copy()
        else:
            track.last_box = np.concatenate(
                [np.minimum(box[:2], predicted[:2]), np.maximum(box[2:], predicted[2:])]
            )
        track.lost_for = 0
        track.detection = detection

    def _report(self) -> Tracks:
        if not self._tracks:
            return Tracks.empty()
        cfg = self.config
        # A matched track reports the detected box itself; a coasting one its prediction.
        boxes = np.array(
            [t.last_box if t.lost_for == 0 else t.filter.box() for t in self._tracks], np.float32
        )
        lost = np.array([t.lost_for for t in self._tracks], np.float32)[:, None]
        return Tracks(
            dilate(boxes, cfg.margin + cfg.coast_growth * lost, cfg.min_margin_px),
            np.array([t.track_id for t in self._tracks], np.int64),
            np.array([t.lost_for > 0 for t in self._tracks], bool),
            np.array([t.detection for t in self._tracks], np.int64),
        )


def dilate(
    box: NDArray[np.float32], margin: float | NDArray[np.float32], min_px: float
) -> NDArray[np.float32]:
    """``box`` (xyxy, or ``(N, 4)`` of them) grown on each side by ``margin`` of its size
    (or ``(N, 1)`` margins, one a box), and by at least ``min_px`` pixels."""
    size = box[..., 2:] - box[..., :2]
    pad = np.maximum(size * margin, min_px)
    return np.concatenate([box[..., :2] - pad, box[..., 2:] + pad], axis=-1).astype(np.float32)
