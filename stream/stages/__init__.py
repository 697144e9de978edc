"""Pipeline stages, in the order a frame meets them: each a class with one
``process(packet)`` and ``reset()``, no threads and no I/O.

    detect -> track -> attributes -> synth -> perturb -> obscure

``detect`` finds faces (CenterFace), ``track`` follows them, ``attributes``
describes each track and runs PPAS, ``synth`` draws each track's surrogate,
``perturb`` adds Stage IV to replaced faces, ``obscure`` hides every other face
and marks the frame anonymized. ``base`` holds the Stage protocol.
"""

from stream.stages.attributes import AttributeStage
from stream.stages.base import KEEP_ENDED, Stage
from stream.stages.detect import SCENE_CUT, DetectStage, detection_scale, thumbnail
from stream.stages.obscure import ObscureStage
from stream.stages.perturb import PerturbStage
from stream.stages.synth import (
    Pick,
    SynthCounts,
    SynthStage,
    covered_share,
    face_of,
)
from stream.stages.track import TrackStage

__all__ = [
    "KEEP_ENDED",
    "SCENE_CUT",
    "AttributeStage",
    "DetectStage",
    "ObscureStage",
    "PerturbStage",
    "Pick",
    "Stage",
    "SynthCounts",
    "SynthStage",
    "TrackStage",
    "covered_share",
    "detection_scale",
    "face_of",
    "thumbnail",
]
