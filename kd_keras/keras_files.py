"""Cheap checks of a `.keras` file from its path and zip directory alone,
before Keras reads it (and before any data loads): a teacher, baseline or
model a user names. This module imports neither Keras nor TensorFlow."""

import zipfile
from pathlib import Path

from kd_keras.errors import TeacherError

# Largest uncompressed size of a `.keras` file's JSON members (config.json,
# metadata.json), read whole into memory by Keras: the config of the
# largest keras.applications model is about 0.3 MB. Other members (the
# weights, read piece by piece) may be up to `KERAS_MEMBER_MAX_BYTES`.
KERAS_JSON_MAX_BYTES = 64 * 2**20
KERAS_MEMBER_MAX_BYTES = 16 * 2**30
KERAS_MAX_MEMBERS = 10_000


def _size(count):
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def check_keras_archive(path, *, role="teacher"):
    """Checks that `path` is a complete `.keras` archive whose members are
    of sane sizes, from its zip directory alone (nothing is decompressed),
    so that Keras never reads a damaged file or a member that would fill
    memory (a small file whose config.json inflates to gigabytes).

    Raises:
        TeacherError: a truncated or damaged zip, no `config.json` inside,
            too many members, or a member larger than its cap.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise TeacherError(
            f"{role} file '{path}' is not a loadable Keras model: a damaged/truncated "
            f".keras file ({error}); copy it again or save the model again with "
            "model.save('model.keras')"
        ) from None
    except OSError as error:
        raise TeacherError(f"cannot read {role} file '{path}': {error.strerror or error}") from None
    if len(members) > KERAS_MAX_MEMBERS:
        raise TeacherError(
            f"{role} file '{path}' holds {len(members)} files, more than a .keras model "
            f"ever has ({KERAS_MAX_MEMBERS} at most); save the model again with model.save"
        )
    names = {member.filename for member in members}
    if "config.json" not in names:
        raise TeacherError(
            f"{role} file '{path}' is not a Keras v3 .keras file (no config.json inside); "
            "save the model with model.save('model.keras')"
        )
    for member in members:
        json_member = member.filename.endswith(".json")
        cap = KERAS_JSON_MAX_BYTES if json_member else KERAS_MEMBER_MAX_BYTES
        if member.file_size > cap:
            raise TeacherError(
                f"{role} file '{path}': its member {member.filename[:80]!r} unpacks to "
                f"{_size(member.file_size)}, over the {_size(cap)} a .keras model's "
                f"{'JSON' if json_member else 'member'} may hold; refused before reading "
                "(a damaged or crafted file): save the model again with model.save"
            )


def check_teacher_file(path, *, role="teacher"):
    """Raises `TeacherError` unless `path` is a regular, complete `.keras`
    file of sane member sizes (the cheap checks of `load_teacher`, made
    before any data loads); returns it as a `Path`."""
    path = Path(path)
    if path.is_dir():
        raise TeacherError(
            f"{role} '{path}' is a folder (a TensorFlow SavedModel?), not a Keras "
            "'.keras' file; load the model in Keras and save it with "
            f"model.save('{role}.keras')"
        )
    if not path.exists():
        raise TeacherError(f"{role} file '{path}' does not exist")
    if not path.is_file():
        raise TeacherError(f"{role} '{path}' is not a regular file (a FIFO, socket or device)")
    if path.suffix != ".keras":
        raise TeacherError(f"{role} file '{path}' must be a Keras v3 '.keras' file")
    check_keras_archive(path, role=role)
    return path
