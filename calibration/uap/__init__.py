"""Stage IV, offline: a universal adversarial perturbation against face recognizers.

    python -m calibration.uap fit -o uap.npz [--norm inf] [--xi 10] [--delta 0.2] [--target identity]
                                             [--method deepfool|sgd]
    python -m calibration.uap report --seed 0 [--picture uap.png] [-o half.npz]

One pattern in the canonical face frame of ``stream/algorithms/facewarp.py`` (Moosavi-Dezfooli
et al. 2017, "Universal adversarial perturbations"): the faces are visited in a
seeded order; for each face the target still classifies as it does the clean
face, DeepFool (multi-class, over the clean face's top candidate classes) finds
the l_2-smallest step that changes the decision, and the pattern plus that step
is projected back onto the l_p ball (p = inf or 2) of radius ``xi`` (pixel
levels, 0-255), as in the paper's Algorithm 1. Passes end when the fooling rate
reaches ``1 - delta`` or after ``--max-passes`` (each takes minutes on a CPU).

``--method sgd`` fits the same ball by stochastic gradient instead (Shafahi et
al. 2020, "Universal adversarial training"): per mini-batch of faces, one step
against the mean clipped margin loss ``max(z_label - max_other z, -clip)``
(signed gradient for l_inf, normalised gradient for l_2), then the same
projection; a face pushed ``clip`` past the boundary stops pulling the pattern.
On faces DeepFool's l_2-minimal per-face steps exceed the l_inf radius (median
l_inf about 17 levels against xi = 10) and clipping them undoes most of each.

Targets, from the faceres model run as a torch module: ``identity`` classifies a
face among the fitting identities by the cosine of its descriptor to each
identity's mean; ``attributes`` is the attribute estimator's gender decision.

Each face reaches the target exactly as the stream will show it, made
differentiable: the pattern is sampled onto the face's mesh with the same
per-triangle map ``from_canonical`` draws with, added and clipped to 0-255, and
the faceres crop is sampled from that (the crop's affine map).

``report`` splits the identities of the labelled photos in two halves (seeded),
fits on one and measures on the other through the stream's own drawing
(``stream.algorithms.perturbation``), with Gaussian noise of the same l_2 energy as a
baseline: the target's fooling rate, dodging at the 1%-false-accept threshold,
transfer to models it was not fitted on (gear, emotion), PSNR and SSIM.

The parts, in the order the fit uses them: ``settings`` (the fit's settings and shared
constants), ``algorithm`` (DeepFool and SGD passes, no faces), ``faces`` (the labelled faces and
the stream's drawing made differentiable), ``targets`` (faceres as the classifier attacked),
``data`` (loading, the split, the artifact), ``evaluation`` (``report``) and ``cli``.
"""

from calibration.uap.algorithm import (
    Fit,
    Problem,
    clipped_margin,
    decisions,
    deepfool,
    fit_universal,
    into_ball,
    project,
)
from calibration.uap.data import data_record, fit_artifact, load_faces, split
from calibration.uap.evaluation import Evaluation, Readout, evaluate, figures, report
from calibration.uap.faces import Face, FacePath, FaceProblem, face_path, find_face, perturbed_crops
from calibration.uap.settings import DESCRIPTOR, FACERES_SIZE, GENDER, METHODS, TARGETS, Settings
from calibration.uap.targets import descriptors, gender_target, identity_target, load_faceres

__all__ = [
    "DESCRIPTOR",
    "FACERES_SIZE",
    "GENDER",
    "METHODS",
    "TARGETS",
    "Evaluation",
    "Face",
    "FacePath",
    "FaceProblem",
    "Fit",
    "Problem",
    "Readout",
    "Settings",
    "clipped_margin",
    "data_record",
    "decisions",
    "deepfool",
    "descriptors",
    "evaluate",
    "face_path",
    "figures",
    "find_face",
    "fit_artifact",
    "fit_universal",
    "gender_target",
    "identity_target",
    "into_ball",
    "load_faceres",
    "load_faces",
    "perturbed_crops",
    "project",
    "report",
    "split",
]
