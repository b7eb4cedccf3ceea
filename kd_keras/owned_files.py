"""Which entries of a folder kd_keras wrote, and removing only those.

Keras-free. A folder's entries are described as `fnmatch` patterns
(`Layout`): `kd_keras.run_folder.RUN_LAYOUT` for a run folder,
`kd_keras.search_folder.SEARCH_LAYOUT` for a search folder. `--overwrite`
removes only those entries (`plan_removal`, `remove_planned`), unlinking
links without following them; everything else in the folder stays.
"""

import dataclasses
import fnmatch
import os
import shutil
from pathlib import Path

# The 8 random characters `tempfile` puts in a name (`mkstemp`, `mkdtemp`).
_RANDOM = "[a-z0-9_]" * 8
# `atomic.atomic_path`'s temporaries (`.{stem}.XXXXXXXX.tmp{suffixes}`), and
# the folders an export writes under a temporary name (`.{name}.partial-XXXXXXXX`,
# `.{name}.old-XXXXXXXX`, `kd_keras.export.convert`), anywhere kd_keras writes.
# Exactly those shapes: `.draft.tmp_keep` or `.thesis.old-v1` are a user's.
TEMP_PATTERNS = (f".*.{_RANDOM}.tmp", f".*.{_RANDOM}.tmp.*")
PARTIAL_PATTERNS = (f".*.partial-{_RANDOM}", f".*.old-{_RANDOM}")


def is_temporary(name):
    """True if `name` is one of `atomic.atomic_path`'s temporary files."""
    return any(fnmatch.fnmatchcase(name, p) for p in TEMP_PATTERNS)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The entries kd_keras writes in one folder, as `fnmatch` patterns.

    Args:
        files: names of files kd_keras writes here.
        dirs: `(pattern, Layout)` pairs: sub-folders and what kd_keras
            writes in them.
        whole: a folder another library writes (a SavedModel): removed as a
            whole, so every name in it must be one of `files` or `dirs`
            (anything else is refused, never deleted).
        anything: every entry inside is kd_keras's (a temporary folder of a
            unique name it made itself).
    """

    files: tuple = ()
    dirs: tuple = ()
    whole: bool = False
    anything: bool = False

    def file_match(self, name):
        return is_temporary(name) or any(fnmatch.fnmatchcase(name, p) for p in self.files)

    def dir_layout(self, name):
        for pattern, layout in (*self.dirs, *((p, ANYTHING) for p in PARTIAL_PATTERNS)):
            if fnmatch.fnmatchcase(name, pattern):
                return layout
        return None


ANYTHING = Layout(anything=True)


@dataclasses.dataclass
class RemovalPlan:
    """What removing kd_keras's files from a folder does (`plan_removal`).

    `files`: kd_keras's files and symbolic links (unlinked); `trees`: its
    temporary folders (deleted whole); `folders`: its folders, deepest first
    (removed once empty); `kept`: other entries, which stay; `refused`:
    unknown entries inside a folder that only goes as a whole.
    """

    files: list = dataclasses.field(default_factory=list)
    trees: list = dataclasses.field(default_factory=list)
    folders: list = dataclasses.field(default_factory=list)
    kept: list = dataclasses.field(default_factory=list)
    refused: list = dataclasses.field(default_factory=list)


def plan_removal(folder, layout, *, keep=()):
    """Which entries of `folder` are kd_keras's under `layout`, without
    changing anything. Symbolic links are never followed: a link with one
    of kd_keras's names is itself removed (unlinked), whatever it points to.

    Args:
        folder: the folder (a run or search folder).
        layout: its `Layout`.
        keep: top-level names never removed (the lock file).

    Returns:
        A `RemovalPlan`.
    """
    plan = RemovalPlan()

    def walk(path, layout, top):
        with os.scandir(path) as entries:
            children = sorted(entries, key=lambda e: e.name)
        for entry in children:
            child = Path(entry.path)
            if top and entry.name in keep:
                continue
            is_link = entry.is_symlink()
            is_dir = not is_link and entry.is_dir(follow_symlinks=False)
            sub = layout.dir_layout(entry.name)
            if is_link and (sub is not None or layout.file_match(entry.name)):
                plan.files.append(child)
            elif is_dir and sub is not None and sub.anything:
                plan.trees.append(child)
            elif is_dir and sub is not None:
                walk(child, sub, False)
                plan.folders.append(child)
            elif not is_dir and not is_link and layout.file_match(entry.name):
                plan.files.append(child)
            else:
                (plan.refused if layout.whole else plan.kept).append(child)

    folder = Path(folder)
    if folder.is_dir():
        walk(folder, layout, True)
    return plan


def remove_planned(plan):
    """Carries out a `RemovalPlan`: files and links are unlinked, temporary
    folders deleted whole (`shutil.rmtree`, which never follows a link),
    other folders removed only once empty (a user's file keeps its folder)."""
    for path in plan.files:
        path.unlink(missing_ok=True)
    for path in plan.trees:
        shutil.rmtree(path, ignore_errors=True)
    for path in plan.folders:
        try:
            path.rmdir()
        except OSError:
            pass  # Not empty: a user's file inside stays, and its folder.


def symlinked_folders(folder, layout):
    """The folders of `layout` under `folder` that are symbolic links."""
    found = []

    def walk(path, layout):
        with os.scandir(path) as entries:
            children = sorted(entries, key=lambda e: e.name)
        for entry in children:
            sub = layout.dir_layout(entry.name)
            if sub is None or sub.anything:
                continue
            if entry.is_symlink():
                found.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                walk(entry.path, sub)

    if Path(folder).is_dir():
        walk(Path(folder), layout)
    return found


def describe_paths(paths, folder, limit=3):
    """`'a', 'b', 'c' and 2 more`, relative to `folder`, for one-line messages."""
    names = []
    for path in paths[:limit]:
        try:
            name = str(Path(path).relative_to(folder))
        except ValueError:
            name = str(path)
        names.append(repr(name if len(name) <= 60 else name[:57] + "..."))
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(names) + more
