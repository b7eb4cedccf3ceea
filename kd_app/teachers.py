"""Teachers uploaded on the page: saved new into `<runs>/teachers/`.

A teacher named on the page must be inside the runs root (`kd_app.checks`);
one the user has elsewhere gets there by upload. The file is created with
`O_CREAT | O_EXCL | O_NOFOLLOW`, so an upload never replaces a file or
writes through a symlink.
"""

import os
import shutil
from pathlib import Path

from kd_keras.errors import LaunchError

from . import confine
from .settings import NAME_PATTERN, TEACHERS_SUBDIR


def store_teacher(runs_dir, file_name, source):
    """Saves an uploaded teacher as `<runs>/teachers/<file_name>`.

    The file is created new (`O_CREAT | O_EXCL | O_NOFOLLOW`): an existing
    teacher of that name, or a symlink in its place, is never written
    through.

    Args:
        runs_dir: the runs root.
        file_name: the upload's name, `<name>.keras` (`name`: letters,
            digits, `.`, `_`, `-`).
        source: a binary file object with the upload's bytes.

    Returns:
        Its path relative to the runs root (what the teacher field takes).

    Raises:
        LaunchError: a bad name, one taken, `teachers` not a folder, or the
            file cannot be written.
    """
    name = str(file_name or "")
    stem = name[: -len(".keras")] if name.endswith(".keras") else ""
    if not NAME_PATTERN.match(stem):
        raise LaunchError(
            f"The teacher file '{name}' must be <name>.keras with a name of letters, "
            "digits, '.', '_' or '-'; rename it and upload it again."
        )
    runs_dir = Path(runs_dir)
    folder = confine.within(runs_dir, TEACHERS_SUBDIR, "teachers folder")
    path = folder / name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # Something else than a folder takes its name.
        raise LaunchError(
            f"'{TEACHERS_SUBDIR}' in the runs folder '{runs_dir}' is not a folder; "
            "move it away (uploaded teachers are saved in that folder)."
        ) from None
    except OSError as error:
        raise LaunchError(f"Cannot save the teacher '{path}': {error.strerror or error}.") from None
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise LaunchError(
            f"A teacher '{TEACHERS_SUBDIR}/{name}' is already in the runs folder; pick it "
            "from the list, or rename the file and upload it again."
        ) from None
    except OSError as error:
        raise LaunchError(f"Cannot save the teacher '{path}': {error.strerror or error}.") from None
    try:
        with os.fdopen(fd, "wb") as file:
            shutil.copyfileobj(source, file, 1 << 20)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise LaunchError(f"Cannot save the teacher '{path}': {error.strerror or error}.") from None
    return f"{TEACHERS_SUBDIR}/{name}"


def uploaded_teachers(runs_dir):
    """The `.keras` files in `<runs>/teachers` (inside the root), by name."""
    folder = Path(runs_dir) / TEACHERS_SUBDIR
    if not folder.is_dir() or not confine.is_inside(folder, runs_dir):
        return []
    return sorted(p for p in folder.glob("*.keras") if p.is_file() and confine.is_inside(p, folder))
