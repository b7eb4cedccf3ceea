"""Wording helpers for the lines the front ends print. Keras-free."""


def plural(count, word, many=None):
    """`"1 epoch"`, `"2 epochs"`: `count` and `word`, made plural (`many`,
    default `word + "s"`) unless `count` is 1."""
    return f"{count} {word if count == 1 else (many or word + 's')}"
