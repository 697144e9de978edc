"""Stage II: privacy metrics on tables whose k, l, t are known, PPAS properties, counterfactuals."""

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.algorithms.privacy import (
    ATTRIBUTES,
    INDEX,
    GlobalDistribution,
    Policy,
    assess,
    attribute_indices,
    changes_for_k,
    closest_count,
    equivalence_classes,
    keep_probability,
    measure,
    ppas,
    randomized_response,
)
from stream.errors import ConfigError

S = GlobalDistribution.celeba()


def table(rows: Any) -> Any:
    """Rows as dicts of attribute -> bool (others False)."""
    out = np.zeros((len(rows), len(ATTRIBUTES)), bool)
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i, INDEX[name]] = value
    return out


def test_celeba_distribution_is_carried_in_the_project() -> None:
    assert len(S.positive) == 40 and ATTRIBUTES[0] == "5_o_Clock_Shadow" and ATTRIBUTES[-1] == "Young"
    assert S.positive[INDEX["Male"]] == pytest.approx(84434 / 202599, abs=1e-4)
    assert S.positive[INDEX["Black_Hair"]] == pytest.approx(0.239, abs=1e-3)


def test_paper_toy_example_two_identities_sharing_male() -> None:
    # Two people who share Male and differ elsewhere: on the quasi-identifier
    # Male they are one class of two (2-anonymous); on Male + Eyeglasses they split.
    t = table([{"Male": True, "Eyeglasses": True, "Smiling": True}, {"Male": True, "Smiling": False}])
    f = measure(t, attribute_indices(["Male"]), attribute_indices(["Smiling"]), S)
    assert (f.k, f.classes) == (2, 1) and f.l == pytest.approx(2.0)  # one smiles, one does not
    assert measure(t, attribute_indices(["Male", "Eyeglasses"]), [], S).k == 1


def test_paper_toy_example_black_hair_homogeneity() -> None:
    # A 3-anonymous class where everyone has black hair: k does not protect the
    # sensitive value (l = 1), and t-closeness shows how far it is from the
    # population's 23.9%.
    t = table(
        [{"Male": True, "Black_Hair": True}] * 3 + [{"Male": False, "Black_Hair": b} for b in (1, 0, 0, 1)]
    )
    f = measure(t, attribute_indices(["Male"]), attribute_indices(["Black_Hair"]), S)
    assert f.k == 3 and f.l == pytest.approx(1.0)
    assert f.t == pytest.approx(1 - S.positive[INDEX["Black_Hair"]], abs=1e-6)
    assert f.worst_t is not None
    assert f.worst_t[0] == "Black_Hair" and f.worst_t[1] == 1.0


def test_metrics_on_a_known_table() -> None:
    # Classes on Male: 4 men (2 smile), 2 women (both smile).
    rows = [{"Male": True, "Smiling": s} for s in (True, True, False, False)]
    rows += [{"Male": False, "Smiling": True}] * 2
    f = measure(table(rows), attribute_indices(["Male"]), attribute_indices(["Smiling"]), S)
    p = S.positive[INDEX["Smiling"]]
    assert f.k == 2 and f.l == pytest.approx(1.0) and f.t == pytest.approx(max(abs(0.5 - p), abs(1 - p)))


def test_randomized_response_probability() -> None:
    assert keep_probability(math.log(3)) == pytest.approx(0.75)
    assert keep_probability(float("inf")) == 1.0


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.floats(min_value=0.01, max_value=0.99),
    st.floats(min_value=0.02, max_value=0.5),
    st.integers(min_value=0, max_value=2**31),
)
def test_ppas_meets_t_in_every_class_before_randomization(n: Any, p_global: Any, t: Any, seed: Any) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.random((n, len(ATTRIBUTES))).astype(np.float32)
    probs[:, : len(ATTRIBUTES) // 2] = (rng.random((n, 20)) < 0.5).astype(np.float32)  # confident ones too
    distribution = GlobalDistribution(np.full(len(ATTRIBUTES), p_global), "test")
    policy = Policy(quasi_identifiers=("Male", "Young"), sensitive=ATTRIBUTES, t=t, epsilon=1.0)
    selection = ppas(probs, distribution, policy, [np.random.default_rng(i) for i in range(n)])
    original = probs > 0.5
    for members in equivalence_classes(original, attribute_indices(policy.quasi_identifiers)).values():
        size = len(members)
        for a in range(len(ATTRIBUTES)):
            if a in attribute_indices(policy.quasi_identifiers):
                continue  # the class is defined by them
            q = selection.chosen[members, a].mean()
            lo, hi = closest_count(size, p_global, t)
            achievable = any(abs(k / size - p_global) <= t + 1e-9 for k in range(size + 1))
            if achievable:
                assert abs(q - p_global) <= t + 1e-9
            else:  # as close as the class size allows
                assert abs(q - p_global) == pytest.approx(
                    min(abs(k / size - p_global) for k in range(size + 1))
                )
            # and with the fewest negations
            assert (selection.chosen[members, a] != original[members, a]).sum() == max(
                0, original[members, a].sum() - hi, lo - original[members, a].sum()
            )


@settings(max_examples=20, deadline=None)
@given(st.floats(min_value=0.1, max_value=4.0), st.integers(min_value=0, max_value=2**31))
def test_randomized_response_flip_rate_matches_epsilon(epsilon: Any, seed: Any) -> None:
    rng = np.random.default_rng(seed)
    values = rng.random(200_000) < 0.5
    released = randomized_response(values, epsilon, rng)
    flip_rate = float((released != values).mean())
    expected = 1 - keep_probability(epsilon)
    assert abs(flip_rate - expected) < 4 * math.sqrt(expected * (1 - expected) / len(values)) + 1e-4


def test_preserved_attributes_are_never_changed() -> None:
    probs = np.full((5, 40), 0.9, np.float32)
    policy = Policy(preserved=("Male",), t=0.05, epsilon=0.1)
    selection = ppas(probs, S, policy, [np.random.default_rng(i) for i in range(5)])
    assert selection.released[:, INDEX["Male"]].all() and selection.chosen[:, INDEX["Male"]].all()


def test_seeded_generators_make_ppas_reproducible() -> None:
    probs = np.random.default_rng(0).random((6, 40)).astype(np.float32)
    a = ppas(probs, S, Policy(), [np.random.default_rng(100 + i) for i in range(6)])
    b = ppas(probs, S, Policy(), [np.random.default_rng(100 + i) for i in range(6)])
    assert (a.released == b.released).all()


def test_assessment_answers_the_three_questions() -> None:
    rows = [{"Male": True, "Young": True, "Smiling": True}] * 3 + [{"Male": False, "Young": True}]
    policy = Policy(quasi_identifiers=("Male", "Young"), sensitive=("Smiling",), k=2, l=1.0, t=1.0)
    verdict = assess(table(rows), policy, S)
    assert not verdict.private and verdict.figures.k == 1  # the one woman is unique
    assert verdict.to_reach_k is not None
    assert len(verdict.to_reach_k) == 1  # one change merges her into the other class
    fixed = table(rows)
    for change in verdict.to_reach_k:
        fixed[change.record, INDEX[change.attribute]] = change.to
    assert measure(fixed, attribute_indices(policy.quasi_identifiers), [], S).k >= 2
    assert assess(fixed, policy, S).private


def test_counterfactual_for_a_stricter_t() -> None:
    # Everyone smiles: 3 men and 2 women; Smiling's global rate is about 48%.
    rows = [{"Male": True, "Smiling": True}] * 3 + [{"Male": False, "Smiling": True}] * 2
    policy = Policy(quasi_identifiers=("Male",), sensitive=("Smiling",), k=2, l=1.0, t=1.0)
    stricter = Policy(quasi_identifiers=("Male",), sensitive=("Smiling",), t=0.3)
    verdict = assess(table(rows), policy, S, stricter)
    assert verdict.private and verdict.figures.t > 0.5
    assert len(verdict.to_reach_t) == 2  # one smile fewer in each class, no more
    after = table(rows)
    for change in verdict.to_reach_t:
        after[change.record, INDEX[change.attribute]] = change.to
    assert measure(after, attribute_indices(("Male",)), attribute_indices(("Smiling",)), S).t <= 0.3


def test_k_cannot_exceed_the_number_of_records() -> None:
    assert changes_for_k(table([{"Male": True}]), attribute_indices(["Male"]), 2) is None


def test_policy_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"privacy.quasi_identifiers: unknown attribute 'Beard'"):
        Policy(quasi_identifiers=("Beard",)).validate()
    with pytest.raises(ConfigError, match=r"privacy.t"):
        Policy(t=2).validate()
