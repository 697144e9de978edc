"""Stage II: measurable facial privacy over CelebA's 40 binary attributes.

- The global distribution S: each attribute's positive fraction (CelebA's by
  default, ``data/celeba_attr_freq.csv``; or computed from any table).
- Equivalence classes: records sharing the values of the policy's
  quasi-identifiers. k-anonymity = the smallest class; entropy l-diversity
  = the smallest exp(entropy) of a sensitive attribute within a class;
  t-closeness = the largest distance between a class's distribution of a
  sensitive attribute and S (for a binary attribute the Earth Mover's
  Distance is |q - p|).
- PPAS (AnonymousNet, Algorithm 1) for binary attributes: for each attribute
  keep the face's value or negate it according to the t-closeness distance,
  then randomized response with epsilon-differential privacy per attribute
  (keep with probability e^eps / (1 + e^eps)), from an injected generator.

Tables are ``(N, 40)`` arrays in ``ATTRIBUTES`` order: bool for values,
float32 probabilities for estimates.

Over 400 lines: PPAS, the k / l / t figures and the counterfactual changes work on
one record format and are checked against each other.
"""

from __future__ import annotations

import csv
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from stream.errors import ConfigError

ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
INDEX = {name: i for i, name in enumerate(ATTRIBUTES)}
CELEBA_FREQUENCIES = Path(__file__).resolve().parent.parent / "data" / "celeba_attr_freq.csv"


def attribute_indices(names: Sequence[str], field_name: str = "attributes") -> list[int]:
    unknown = [n for n in names if n not in INDEX]
    if unknown:
        raise ConfigError(f"{field_name}: unknown attribute {unknown[0]!r} (CelebA names, e.g. Male, Young)")
    return [INDEX[n] for n in names]


# --- the global distribution ---------------------------------------------------------------


@dataclass(frozen=True)
class GlobalDistribution:
    """``positive``: ``(40,)`` float64, the fraction of faces with each attribute."""

    positive: NDArray[np.float64]
    source: str

    @classmethod
    def celeba(cls) -> GlobalDistribution:
        return cls.from_csv(CELEBA_FREQUENCIES)

    @classmethod
    def from_csv(cls, path: Path) -> GlobalDistribution:
        """Read ``attribute,positive,negative[,...]`` rows (counts)."""
        counts: dict[str, tuple[float, float]] = {}
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                counts[row["attribute"]] = (float(row["positive"]), float(row["negative"]))
        missing = [a for a in ATTRIBUTES if a not in counts]
        if missing:
            raise ConfigError(f"{path}: no counts for {missing[0]}")
        positive = np.array([counts[a][0] / (counts[a][0] + counts[a][1]) for a in ATTRIBUTES])
        return cls(positive, str(path))

    @classmethod
    def from_table(cls, table: NDArray[np.bool_], source: str) -> GlobalDistribution:
        if table.ndim != 2 or table.shape[1] != len(ATTRIBUTES) or len(table) == 0:
            raise ValueError(f"expected a non-empty (N, {len(ATTRIBUTES)}) table, got {table.shape}")
        return cls(table.mean(axis=0).astype(np.float64), source)

    def write_csv(self, path: Path, count: int) -> None:
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["attribute", "positive", "negative", "fraction_positive", "source"])
            for name, p in zip(ATTRIBUTES, self.positive, strict=True):
                pos = round(p * count)
                writer.writerow([name, pos, count - pos, f"{p:.6f}", self.source])


# --- metrics ---------------------------------------------------------------------------------


def equivalence_classes(table: NDArray[np.bool_], quasi: Sequence[int]) -> dict[tuple[bool, ...], list[int]]:
    """Record indices grouped by their quasi-identifier values."""
    classes: dict[tuple[bool, ...], list[int]] = {}
    for i, row in enumerate(table):
        classes.setdefault(tuple(bool(v) for v in row[list(quasi)]), []).append(i)
    return classes


def entropy_diversity(values: NDArray[np.bool_]) -> float:
    """exp(Shannon entropy) of a binary column: 1 when uniform-valued, 2 when split evenly."""
    q = float(values.mean())
    if q in (0.0, 1.0):
        return 1.0
    return math.exp(-(q * math.log(q) + (1 - q) * math.log(1 - q)))


@dataclass(frozen=True)
class PrivacyFigures:
    """What a table achieves: k (smallest class), l (smallest entropy diversity of a sensitive
    attribute in a class), t (largest |q - p| of a sensitive attribute), and the classes."""

    k: int
    l: float  # noqa: E741 - the name of the measure
    t: float
    classes: int
    worst_t: tuple[str, float, float] | None  # attribute, class fraction, global fraction


def measure(
    table: NDArray[np.bool_], quasi: Sequence[int], sensitive: Sequence[int], distribution: GlobalDistribution
) -> PrivacyFigures:
    classes = equivalence_classes(table, quasi)
    k = min((len(m) for m in classes.values()), default=0)
    l_value, t_value = math.inf, 0.0
    worst: tuple[str, float, float] | None = None
    for members in classes.values():
        rows = table[members]
        for s in sensitive:
            l_value = min(l_value, entropy_diversity(rows[:, s]))
            q = float(rows[:, s].mean())
            distance = abs(q - distribution.positive[s])
            if worst is None or distance > t_value:
                t_value = distance
                worst = (ATTRIBUTES[s], q, float(distribution.positive[s]))
    return PrivacyFigures(k, l_value if sensitive and classes else math.inf, t_value, len(classes), worst)


# --- PPAS ------------------------------------------------------------------------------------


def keep_probability(epsilon: float) -> float:
    """Randomized response: the probability of reporting the true value, e^eps / (1 + e^eps)."""
    if math.isinf(epsilon):
        return 1.0
    return math.exp(epsilon) / (1 + math.exp(epsilon))


def randomized_response(
    values: NDArray[np.bool_], epsilon: float, rng: np.random.Generator
) -> NDArray[np.bool_]:
    """Each value kept with ``keep_probability(epsilon)``, else flipped: epsilon-DP per attribute."""
    keep = rng.random(values.shape) < keep_probability(epsilon)
    return np.where(keep, values, ~values)


def closest_count(n: int, p: float, t: float) -> tuple[int, int]:
    """The range [lo, hi] of positive counts k with |k/n - p| <= t, or the single closest k."""
    lo = max(0, math.ceil((p - t) * n - 1e-9))
    hi = min(n, math.floor((p + t) * n + 1e-9))
    if lo <= hi:
        return lo, hi
    best = min(range(n + 1), key=lambda k: abs(k / n - p))
    return best, best


def select_class(probabilities: NDArray[np.float32], p: float, t: float) -> NDArray[np.bool_]:
    """Keep-or-negate for one attribute over one equivalence class.

    Each face starts from its own value (probability > 0.5). If the class's
    positive fraction is more than ``t`` from the global ``p``, the fewest
    faces are negated to bring it within ``t`` (or as close as the class size
    allows), least confident first.
    """
    values = probabilities > 0.5
    n = len(values)
    lo, hi = closest_count(n, p, t)
    count = int(values.sum())
    if count > hi:  # too many positives: negate the least confident positives
        order = [i for i in np.argsort(probabilities) if values[i]]
        values[order[: count - hi]] = False
    elif count < lo:
        order = [i for i in np.argsort(-probabilities) if not values[i]]
        values[order[: lo - count]] = True
    return values


@dataclass(frozen=True)
class Policy:
    """Which attributes identify, which are sensitive, which must be kept, and the targets.

    preserved attributes keep their estimated value (no negation, no noise).
    """

    quasi_identifiers: tuple[str, ...] = ("Male", "Young", "Black_Hair", "Blond_Hair", "Eyeglasses")
    sensitive: tuple[str, ...] = ("Smiling", "Mouth_Slightly_Open", "Narrow_Eyes", "Gray_Hair", "Bald")
    preserved: tuple[str, ...] = ()
    k: int = 2
    l: float = 1.5  # noqa: E741
    t: float = 0.2
    epsilon: float = 2.0

    def validate(self) -> Policy:
        attribute_indices(self.quasi_identifiers, "privacy.quasi_identifiers")
        attribute_indices(self.sensitive, "privacy.sensitive")
        attribute_indices(self.preserved, "privacy.preserved")
        if not 1 <= self.k <= 10000:
            raise ConfigError(f"privacy.k: expected 1..10000, got {self.k}")
        if not 1.0 <= self.l <= 2.0:
            raise ConfigError(
                f"privacy.l: expected 1..2 (entropy l-diversity of binary attributes), got {self.l}"
            )
        if not 0.0 <= self.t <= 1.0:
            raise ConfigError(f"privacy.t: expected 0..1, got {self.t}")
        if not self.epsilon > 0:
            raise ConfigError(
                f"privacy.epsilon: expected a positive number (inf: no noise), got {self.epsilon}"
            )
        return self


@dataclass
class Selection:
    """PPAS output for a table: values before and after randomized response, and the negations."""

    chosen: NDArray[np.bool_]  # after keep-or-negate, before noise
    released: NDArray[np.bool_]  # after randomized response
    negated: NDArray[np.bool_] = field(default_factory=lambda: np.zeros((0, len(ATTRIBUTES)), bool))


def ppas(
    probabilities: NDArray[np.float32],
    distribution: GlobalDistribution,
    policy: Policy,
    rngs: Sequence[np.random.Generator],
) -> Selection:
    """PPAS over a table of faces (one row of 40 probabilities each, NaN = not estimated).

    Classes are formed by the faces' own quasi-identifier values; each
    attribute is then kept or negated within its class to meet t, and
    released through randomized response with each face's own generator
    (``rngs[i]``, seeded per track). Preserved and unestimated attributes
    keep their value (unestimated ones are released as the global majority,
    which reveals nothing about the face).
    """
    probs = np.asarray(probabilities, np.float32)
    known = ~np.isnan(probs)
    filled = np.where(known, probs, (distribution.positive > 0.5).astype(np.float32))
    original = filled > 0.5
    chosen = original.copy()
    quasi = attribute_indices(policy.quasi_identifiers)
    preserved = set(attribute_indices(policy.preserved))
    for members in equivalence_classes(original, quasi).values():
        for a in range(len(ATTRIBUTES)):
            if a in preserved:
                continue
            chosen[members, a] = select_class(filled[members, a], float(distribution.positive[a]), policy.t)
    released = chosen.copy()
    noisy = [a for a in range(len(ATTRIBUTES)) if a not in preserved]
    for i, rng in enumerate(rngs):
        released[i, noisy] = randomized_response(chosen[i, noisy], policy.epsilon, rng)
    return Selection(chosen, released, chosen != original)


# --- counterfactuals --------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    record: int
    attribute: str
    to: bool


def changes_for_k(table: NDArray[np.bool_], quasi: Sequence[int], k: int) -> list[Change] | None:
    """A small set of quasi-identifier changes that makes every class at least ``k`` big.

    Greedy: the smallest class moves, record by record, into the nearest
    class (fewest differing quasi-identifiers) until all reach k. None when
    there are fewer than k records.
    """
    if len(table) < k:
        return None
    work = table.copy()
    changes: list[Change] = []
    while True:
        classes = equivalence_classes(work, quasi)
        small = min(classes.items(), key=lambda kv: len(kv[1]))
        if len(small[1]) >= k:
            return changes
        key, members = small
        others = [(other, m) for other, m in classes.items() if other != key]
        target, _ = min(
            others, key=lambda kv: (sum(a != b for a, b in zip(kv[0], key, strict=True)), -len(kv[1]))
        )
        for record in members:
            for j, (a, b) in enumerate(zip(key, target, strict=True)):
                if a != b:
                    work[record, quasi[j]] = b
                    changes.append(Change(record, ATTRIBUTES[quasi[j]], b))


def changes_for_t(
    table: NDArray[np.bool_],
    quasi: Sequence[int],
    sensitive: Sequence[int],
    distribution: GlobalDistribution,
    t: float,
) -> list[Change]:
    """The fewest sensitive-value changes that bring every class within ``t`` (where its size allows)."""
    changes = []
    for members in equivalence_classes(table, quasi).values():
        for s in sensitive:
            values = table[members, s]
            lo, hi = closest_count(len(members), float(distribution.positive[s]), t)
            count = int(values.sum())
            if count > hi:
                flip = [m for m, v in zip(members, values, strict=True) if v][: count - hi]
                changes += [Change(m, ATTRIBUTES[s], False) for m in flip]
            elif count < lo:
                flip = [m for m, v in zip(members, values, strict=True) if not v][: lo - count]
                changes += [Change(m, ATTRIBUTES[s], True) for m in flip]
    return changes


@dataclass(frozen=True)
class Assessment:
    """ "Is it private now", "how private", "can it be more private"."""

    private: bool
    figures: PrivacyFigures
    epsilon: float
    target: Policy
    to_reach_k: list[Change] | None
    to_reach_t: list[Change]


def assess(
    table: NDArray[np.bool_], policy: Policy, distribution: GlobalDistribution, stricter: Policy | None = None
) -> Assessment:
    """Whether ``table`` (released values) meets ``policy``, its figures, and the changes
    that would reach ``stricter`` (default: the policy itself)."""
    quasi = attribute_indices(policy.quasi_identifiers)
    sensitive = attribute_indices(policy.sensitive)
    figures = measure(table, quasi, sensitive, distribution)
    private = figures.k >= policy.k and figures.l >= policy.l - 1e-9 and figures.t <= policy.t + 1e-9
    goal = stricter or policy
    return Assessment(
        private=private,
        figures=figures,
        epsilon=policy.epsilon,
        target=goal,
        to_reach_k=changes_for_k(table, quasi, goal.k),
        to_reach_t=changes_for_t(table, quasi, sensitive, distribution, goal.t),
    )


# --- online PPAS for streams ---------------------------------------------------------------------


@dataclass
class TrackPrivacy:
    """What PPAS chose for one track (in memory; the report shows only ``released``
    unless the original values are asked for)."""

    track_id: int
    original: NDArray[np.bool_]
    estimated: NDArray[np.bool_]
    chosen: NDArray[np.bool_]
    released: NDArray[np.bool_]


class StreamPrivacy:
    """PPAS one track at a time, as tracks freeze, for a stream.

    A track's class is the tracks that share its original quasi-identifier
    values. Each attribute keeps the track's value if the class (with it)
    stays within t of the global fraction; otherwise it takes the value that
    brings the class closer (greedy, online: earlier tracks never change),
    then randomized response with a generator seeded by (seed, track id).

    ``seed`` None draws a secret from the OS: epsilon-differential privacy
    holds only while nobody can recompute the coin flips, so the secret is
    kept in this object alone, never logged or reported. A given seed
    (reproducible tests) weakens the guarantee to nothing for whoever knows it;
    ``seeded`` says which it is.
    """

    def __init__(
        self,
        policy: Policy,
        distribution: GlobalDistribution,
        seed: int | None = None,
        secret: int | None = None,
    ) -> None:
        self.policy = policy.validate()
        self.distribution = distribution
        self.seeded = seed is not None
        # ``secret``: one the caller drew from the OS and shares with the runs of the same
        # video's segments (so a segment run again draws as it did), never written anywhere.
        self._seed = seed if seed is not None else secret if secret is not None else secrets.randbits(128)
        self.quasi = attribute_indices(policy.quasi_identifiers)
        self.preserved = set(attribute_indices(policy.preserved))
        self.tracks: dict[int, TrackPrivacy] = {}
        # Per class (original quasi-identifiers): its size and how many chose each attribute,
        # kept for every track of the stream, also those ``forget`` took out of ``tracks``.
        self._classes: dict[tuple[bool, ...], tuple[int, NDArray[np.int64]]] = {}
        self.forgotten = 0

    def __repr__(self) -> str:  # never the seed
        return f"StreamPrivacy({len(self.tracks)} tracks, {'user seed' if self.seeded else 'secret seed'})"

    def reset(self) -> None:
        self.tracks.clear()
        self._classes.clear()
        self.forgotten = 0

    def forget(self, track_id: int) -> None:
        """Drop an ended track's record (a stream running for days keeps a bounded number):
        its class still counts it when later tracks are chosen, the assessment no longer
        lists it."""
        if self.tracks.pop(track_id, None) is not None:
            self.forgotten += 1

    def select(self, track_id: int, probability: NDArray[np.float32]) -> TrackPrivacy:
        if track_id in self.tracks:  # chosen once, never again
            return self.tracks[track_id]
        estimated = ~np.isnan(probability)
        original = np.where(estimated, probability > 0.5, self.distribution.positive > 0.5)
        key = tuple(bool(v) for v in original[self.quasi])
        size, chose = self._classes.get(key, (0, np.zeros(len(ATTRIBUTES), np.int64)))
        chosen = original.copy()
        t = self.policy.t
        for a in range(len(ATTRIBUTES)):
            if a in self.preserved or a in self.quasi:
                continue
            p = float(self.distribution.positive[a])
            count = int(chose[a])
            n = size + 1
            keep = abs((count + int(original[a])) / n - p)
            other = abs((count + 1 - int(original[a])) / n - p)
            if keep > t + 1e-12 and other < keep:
                chosen[a] = not original[a]
        rng = np.random.default_rng([self._seed, track_id])
        released = chosen.copy()
        noisy = [a for a in range(len(ATTRIBUTES)) if a not in self.preserved]
        released[noisy] = randomized_response(chosen[noisy], self.policy.epsilon, rng)
        record = TrackPrivacy(track_id, original, estimated, chosen, released)
        self.tracks[track_id] = record
        self._classes[key] = (size + 1, chose + chosen)
        return record

    def assessment(self, stricter: Policy | None = None) -> Assessment | None:
        """The run's figures over the released attributes of every chosen track still held
        (the last ``KEEP_ENDED`` ended ones and the live ones, see ``forget``)."""
        if not self.tracks:
            return None
        released = np.array([r.released for r in self.tracks.values()])
        return assess(released, self.policy, self.distribution, stricter)

    def class_sizes(self) -> dict[int, int]:
        """Per track, the size of its equivalence class over the released quasi-identifiers."""
        keys = {tid: tuple(bool(v) for v in r.released[self.quasi]) for tid, r in self.tracks.items()}
        counts: dict[tuple[bool, ...], int] = {}
        for key in keys.values():
            counts[key] = counts.get(key, 0) + 1
        return {tid: counts[key] for tid, key in keys.items()}
