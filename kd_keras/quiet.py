"""Quiet start-up for the front ends: their own lines come first.

TensorFlow's C++ start-up writes lines such as "oneDNN custom operations are
on" and "failed call to cuInit" to stderr, some of them before
`TF_CPP_MIN_LOG_LEVEL` takes effect. A front end (`python -m kd_keras`,
`python -m tuning`, the app's runs) calls `start_tensorflow(verbose)` after
its own checks and before anything imports TensorFlow:

- the user set `TF_CPP_MIN_LOG_LEVEL`, or `verbose` is true (`--verbose`):
  TensorFlow starts as it would on its own, every line shown;
- otherwise `TF_CPP_MIN_LOG_LEVEL` becomes 2 (warnings and errors of a
  running TensorFlow are still shown) and the start-up lines (importing
  TensorFlow and Keras, finding the devices) are held back; if the start
  fails they are printed after all, so nothing needed is lost.

Keras-free: importing this module does not start TensorFlow.
"""

import contextlib
import os
import sys
import tempfile

from kd_keras.hardware import enable_onednn_opts

LOG_LEVEL_VAR = "TF_CPP_MIN_LOG_LEVEL"
# The level set when the user set none: C++ warnings and errors of a
# running TensorFlow still show; informational lines do not.
QUIET_LOG_LEVEL = "2"
_state = {"quiet": False}  # Set by start_tensorflow.


def is_quiet(verbose=False, environ=None):
    """True when TensorFlow's start-up lines are to be held back: the user
    asked for no `--verbose` and set no `TF_CPP_MIN_LOG_LEVEL`."""
    environ = os.environ if environ is None else environ
    return not verbose and LOG_LEVEL_VAR not in environ


@contextlib.contextmanager
def held_stderr():
    """Holds back what is written to file descriptor 2 (C++ included) while
    the block runs; writes it out only if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            held.seek(0)
            sys.stderr.buffer.write(held.read())
            sys.stderr.flush()
            raise
        _restore(saved)


def _restore(saved):
    with contextlib.suppress(ValueError, OSError):
        sys.stderr.flush()
    if saved is not None:
        os.dup2(saved, 2)
        os.close(saved)


def start_tensorflow(verbose=False):
    """Imports TensorFlow and Keras and finds the devices, quietly unless
    `verbose` or the user's `TF_CPP_MIN_LOG_LEVEL` say otherwise.

    Call it where a front end is about to import TensorFlow (after its
    Keras-free checks). Threads and devices can still be set afterwards:
    listing the devices does not start TensorFlow's runtime.

    Returns:
        True if the start-up lines were held back.
    """
    if "tensorflow" in sys.modules:
        return False  # Started already: nothing left to hold back.
    # TensorFlow's oneDNN kernels on every CPU, not only the newest
    # (kd_keras.hardware.ONEDNN_OPTS_VAR), unless the user chose.
    enable_onednn_opts()
    if not is_quiet(verbose):
        import tensorflow as tf

        tf.config.list_physical_devices()
        return False
    os.environ[LOG_LEVEL_VAR] = QUIET_LOG_LEVEL
    with held_stderr():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()  # cuInit and the device lines.
    _state["quiet"] = True
    return True


@contextlib.contextmanager
def quiet_runtime_start():
    """After a quiet `start_tensorflow`, holds back what a runtime prints
    when it starts (LiteRT's "Created TensorFlow Lite XNNPACK delegate");
    otherwise does nothing."""
    if not _state["quiet"]:
        yield
        return
    with held_stderr():
        yield
