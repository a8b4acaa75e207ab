"""The second bundled example: deterministic, its own signature, served by name alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeroute import contract
from edgeroute.config import ModelEntry
from edgeroute.models.card import load_card
from edgeroute.models.runtime import OnnxModel
from edgeroute.models.wine import INPUT, LABEL, ensure_wine, wine_split
from edgeroute.signature import TensorSpec, signature_from_onnx


def test_two_builds_are_byte_identical_and_accurate(tmp_path: Path) -> None:
    first, second = ensure_wine(tmp_path / "a"), ensure_wine(tmp_path / "b")
    for a, b in ((first.teacher, second.teacher), (first.student, second.student)):
        assert a.read_bytes() == b.read_bytes()
    split = wine_split()
    for path in (first.teacher, first.student):
        labels = OnnxModel(path).run({INPUT: split.x_test})[LABEL]
        assert (labels == split.y_test).mean() >= 0.9
        assert load_card(path).heldout_accuracy >= 0.9
    assert load_card(first.student).parameters < load_card(first.teacher).parameters / 100


def test_its_signature_is_not_the_digits_one(tmp_path: Path) -> None:
    built = ensure_wine(tmp_path)
    signature = signature_from_onnx(built.student, "wine")
    assert signature.inputs == (TensorSpec("measurements", "FP32", (-1, 13)),)
    assert [o.name for o in signature.outputs] == ["class_probabilities", "cultivar"]
    assert signature.mismatches(signature_from_onnx(built.teacher, "wine")) == []
    assert signature.mismatches(contract.SIGNATURE.renamed("wine"))


def test_a_damaged_build_is_rebuilt(tmp_path: Path) -> None:
    built = ensure_wine(tmp_path)
    good = built.student.read_bytes()
    built.student.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert ensure_wine(tmp_path).student.read_bytes() == good


def test_wine_is_served_by_name_alone_and_others_are_not() -> None:
    assert ModelEntry(name="wine").bundled
    with pytest.raises(ValueError):
        ModelEntry(name="iris")
    assert np.isfinite(wine_split().x_train).all()
