"""Reading files that another process is writing, without failing the page.

kd_keras's readers (`kd_keras.run_folder`, `kd_keras.atomic`) raise
`DamagedFileError` for a file that cannot be parsed; the app shows what it
can of a run instead, so a damaged or unreadable file reads as missing.
"""

import math
import os

import pandas as pd


def read_or(reader, default=None):
    """`reader()`, or `default` if the file it reads is damaged or unreadable."""
    try:
        return reader()
    except (OSError, ValueError):
        return default


def number(value):
    """`value` as a finite float, or None (a blank cell, text, NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def read_csv(path):
    """A CSV file as a DataFrame, or None if it is missing, empty or torn."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    return frame if len(frame.columns) else None


def tail(path, lines=40, max_bytes=65536):
    """The last `lines` non-blank lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - max_bytes))
            data = file.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r", "\n")
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
