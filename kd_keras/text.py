"""Wording helpers for the lines the front ends print. Keras-free."""


def plural(count, word, many=None):
    """`"1 epoch"`, `"2 epochs"`: `count` and `word`, made plural (`many`,
    default `word + "s"`) unless `count` is 1."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


ECHO_CHARS = 40  # The most of a user's string (a class name, a file name) a message echoes.


def clip(text, limit=ECHO_CHARS):
    """`text` as a string of at most `limit` characters, cut with "…":
    a user's string echoed in a message keeps the message one short line."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_list(items, limit=5, *, quote=True):
    """`'a', 'b', 'c' and 7 more`: a list that keeps a message one short line
    (each quoted item cut to `ECHO_CHARS` characters, `clip`; unquoted
    items are already-formatted phrases that clip what they echo)."""
    items = [f"'{clip(item)}'" if quote else str(item) for item in items]
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit} more"
