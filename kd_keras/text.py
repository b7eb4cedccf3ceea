"""Wording helpers for the lines the front ends print. Keras-free."""


def plural(count, word, many=None):
    """`"1 epoch"`, `"2 epochs"`: `count` and `word`, made plural (`many`,
    default `word + "s"`) unless `count` is 1."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def short_list(items, limit=5, *, quote=True):
    """`'a', 'b', 'c' and 7 more`: a list that keeps a message one short line."""
    items = [f"'{item}'" if quote else str(item) for item in items]
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"
