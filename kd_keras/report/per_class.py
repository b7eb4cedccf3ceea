"""Accuracy per class: which classes a model gets right, and how many
images each figure rests on.

Keras-free: it takes labels and predicted labels as integer arrays, so
`python -m kd_keras evaluate --per-class` and any front end share it.
"""

import numpy as np


def per_class_accuracy(labels, predicted, classes):
    """Accuracy of each class, in label order.

    Args:
        labels: the true labels, integers in `[0, len(classes))`.
        predicted: the predicted labels, the same length as `labels`.
        classes: the class names, in label order.

    Returns:
        A dict `{class_name: {"accuracy": float or None, "images": int}}`
        in label order; `accuracy` is `None` for a class with no image.

    Raises:
        ValueError: `labels` and `predicted` differ in length, or a label
            lies outside `[0, len(classes))`; the message names it.
    """
    labels = np.asarray(labels).reshape(-1)
    predicted = np.asarray(predicted).reshape(-1)
    if labels.shape != predicted.shape:
        raise ValueError(
            f"labels and predicted labels differ in length: {len(labels)} and {len(predicted)}"
        )
    classes = list(classes)
    for name, values in (("label", labels), ("predicted label", predicted)):
        outside = values[(values < 0) | (values >= len(classes))]
        if outside.size:
            raise ValueError(
                f"{name} {int(outside[0])} is not one of the {len(classes)} classes "
                f"(0 to {len(classes) - 1})"
            )
    images = np.bincount(labels, minlength=len(classes))
    right = np.bincount(labels[labels == predicted], minlength=len(classes))
    return {
        name: {
            "accuracy": float(right[k] / images[k]) if images[k] else None,
            "images": int(images[k]),
        }
        for k, name in enumerate(classes)
    }
