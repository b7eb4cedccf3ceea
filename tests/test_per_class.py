"""Accuracy per class (`kd_keras.report.per_class`): Keras-free."""

import pytest

from kd_keras.report.per_class import per_class_accuracy


def test_each_class_counts_only_its_own_images():
    labels = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    predicted = [0, 0, 0, 1, 1, 0, 2, 1, 1, 1]
    result = per_class_accuracy(labels, predicted, ["cat", "dog", "emu", "fox"])
    assert list(result) == ["cat", "dog", "emu", "fox"]  # Label order.
    assert result["cat"] == {"accuracy": 0.75, "images": 4}
    assert result["dog"] == {"accuracy": 0.5, "images": 2}
    assert result["emu"] == {"accuracy": 0.25, "images": 4}
    # A class with no image has no accuracy, not 0.
    assert result["fox"] == {"accuracy": None, "images": 0}
    # Weighted by images, the classes give the overall accuracy back.
    right = sum(r["accuracy"] * r["images"] for r in result.values() if r["images"])
    assert right / len(labels) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "labels, predicted, message",
    [
        ([0, 1], [0], "differ in length: 2 and 1"),
        ([0, 3], [0, 1], "label 3 is not one of the 3 classes (0 to 2)"),
        ([0, 1], [0, -1], "predicted label -1 is not one of the 3 classes"),
    ],
)
def test_bad_labels_are_named(labels, predicted, message):
    with pytest.raises(ValueError) as error:
        per_class_accuracy(labels, predicted, ["a", "b", "c"])
    assert message in str(error.value)
