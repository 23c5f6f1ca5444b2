from __future__ import annotations

import pytest

from unipo.diagnostics.passk import maj_at_k, pass_at_k


def test_pass_at_k_hand_values():
    # n=4, c=1, k=2: 1 − C(3,2)/C(4,2) = 1 − 3/6 = 0.5
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    # n=5, c=2, k=3: 1 − C(3,3)/C(5,3) = 1 − 1/10 = 0.9
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    # k=1 is the plain accuracy c/n
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_maj_at_k():
    answers = ["3", "4", "4", "3", "3"]
    correct = [True, False, False, True, True]
    assert maj_at_k(answers, correct, 1) == 1.0  # "3"
    assert maj_at_k(answers, correct, 3) == 0.0  # "4" twice
    assert maj_at_k(answers, correct, 4) == 1.0  # tie 2–2, earliest ("3") wins
