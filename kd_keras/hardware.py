"""What the machine can compute fast, and the precision `"auto"` picks from it.

This module imports neither Keras nor TensorFlow: the facts it reads (CPU
flags, GPU compute capabilities) are passed in or read from the operating
system, so the rule is testable with faked machines and usable by front ends
that must start quickly.

The rule behind `precision="auto"` / `teacher_precision="auto"`:

| machine                                   | precision       | teacher precision |
| ----------------------------------------- | --------------- | ----------------- |
| NVIDIA GPU, compute capability >= 8.0     | mixed_bfloat16  | bfloat16          |
| NVIDIA GPU, compute capability < 8.0      | mixed_float16   | float16           |
| CPU with native bfloat16 (`avx512_bf16`   | mixed_bfloat16  | bfloat16          |
| or `amx_bf16` in its flags)               |                 |                   |
| anything else                             | float32         | float32           |

Without native bfloat16 instructions TensorFlow emulates bfloat16 on a CPU,
and a bfloat16 training step is then several times slower than float32
(measured about 5x on a 2-core AVX2-only AMD EPYC); with them it is faster
(docs/speed.md). With several GPUs, the weakest decides. An explicit value
is never changed.

`resolve_precisions` returns the resolved values and the reason, so a run
records what it ran with (never "auto") and says why.
"""

import dataclasses
import os
import platform
import re
from pathlib import Path

AUTO = "auto"
# CPU flags (as Linux lists them in /proc/cpuinfo) of native bfloat16
# arithmetic that oneDNN uses for bfloat16 convolutions and matrix products.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# GPUs from this compute capability on (Ampere) have bfloat16 tensor cores.
GPU_BF16_CAPABILITY = (8, 0)
# oneDNN (TensorFlow's CPU kernels) can be capped below the CPU's
# instruction set with ONEDNN_MAX_CPU_ISA (older name DNNL_MAX_CPU_ISA); only
# these caps keep native bfloat16 arithmetic.
ONEDNN_ISA_ENV_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
ONEDNN_BF16_ISAS = frozenset(
    {
        "ALL",
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX512_CORE_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512",
        "AVX10_1_512_AMX",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
    }
)
# TensorFlow's switch for its oneDNN CPU kernels. Unset, TensorFlow turns
# them on only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX
# (TensorFlow 2.9+) and runs its Eigen kernels elsewhere: on a 2-core
# AVX2-only AMD EPYC the float32 distillation step ran 1.9x faster with them
# (docs/speed.md). kd_keras's front ends set it to "1" before TensorFlow
# starts unless the user set it (`enable_onednn_opts`).
ONEDNN_OPTS_VAR = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_OPTS_DEFAULT = "1"
# CPU flags worth writing next to a speed figure.
_REPORTED_FLAG = re.compile(r"^(avx2|fma|avx512\w*|amx\w*|avx_vnni\w*)$")


@dataclasses.dataclass(frozen=True)
class Machine:
    """The facts the precision rule reads.

    Attributes:
        cpu_model: the CPU's model name ("" if unknown).
        cpu_flags: the CPU's feature flags, lower case, as in /proc/cpuinfo.
        gpu_capabilities: one `(major, minor)` compute capability per GPU.
        onednn_max_isa: the `ONEDNN_MAX_CPU_ISA` cap on oneDNN's
            instructions, upper case ("" if not set).
        onednn_opts: `TF_ENABLE_ONEDNN_OPTS` as TensorFlow runs with it
            under kd_keras's front ends ("1" unless the user set another).
    """

    cpu_model: str = ""
    cpu_flags: frozenset = frozenset()
    gpu_capabilities: tuple = ()
    onednn_max_isa: str = ""
    onednn_opts: str = ONEDNN_OPTS_DEFAULT

    @property
    def onednn_caps_bf16(self):
        """True if `ONEDNN_MAX_CPU_ISA` keeps oneDNN below bfloat16."""
        return bool(self.onednn_max_isa) and self.onednn_max_isa not in ONEDNN_BF16_ISAS

    @property
    def native_bf16_cpu(self):
        return not self.onednn_caps_bf16 and any(
            flag in self.cpu_flags for flag in NATIVE_BF16_CPU_FLAGS
        )

    def speed_flags(self):
        """The flags that matter for speed (AVX2, FMA, AVX-512*, AMX*), sorted."""
        return sorted(f for f in self.cpu_flags if _REPORTED_FLAG.match(f))

    def describe(self):
        """One line: CPU model, its speed flags and the GPUs, for reports."""
        flags = " ".join(self.speed_flags()) or "no AVX2/AVX-512/AMX flags"
        line = f"{self.cpu_model or platform.machine() or 'unknown CPU'} ({flags})"
        if self.onednn_max_isa:
            line += f"; ONEDNN_MAX_CPU_ISA={self.onednn_max_isa}"
        if self.onednn_opts != ONEDNN_OPTS_DEFAULT:
            line += f"; {ONEDNN_OPTS_VAR}={self.onednn_opts}"
        if self.gpu_capabilities:
            gpus = ", ".join(f"{a}.{b}" for a, b in self.gpu_capabilities)
            line += f"; GPUs with compute capability {gpus}"
        return line


def read_cpu(cpuinfo="/proc/cpuinfo"):
    """`(model, flags)` of this machine's CPU, from /proc/cpuinfo on Linux.

    Elsewhere (or if the file cannot be read) the model is
    `platform.processor()` and the flags are empty, which the rule treats
    as "no native bfloat16".
    """
    model, flags = "", set()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return platform.processor() or "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.lower().split())
    return model, frozenset(flags)


def onednn_max_isa(environ=None):
    """The oneDNN instruction-set cap set in the environment, upper case, or ""."""
    environ = os.environ if environ is None else environ
    for name in ONEDNN_ISA_ENV_VARS:
        value = environ.get(name, "").strip().upper()
        if value:
            return value
    return ""


def this_machine(gpu_capabilities=()):
    """The `Machine` this process runs on (GPU capabilities passed in: finding
    them needs TensorFlow, see `kd_keras.train.speed.local_machine`)."""
    model, flags = read_cpu()
    opts = os.environ.get(ONEDNN_OPTS_VAR, ONEDNN_OPTS_DEFAULT).strip() or ONEDNN_OPTS_DEFAULT
    return Machine(model, flags, tuple(gpu_capabilities), onednn_max_isa(), opts)


def enable_onednn_opts(environ=None):
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` in `environ` (default `os.environ`)
    unless it is set already; returns the value TensorFlow will see. Only
    effective before TensorFlow is imported (a front end calls it first)."""
    environ = os.environ if environ is None else environ
    if not environ.get(ONEDNN_OPTS_VAR, "").strip():
        environ[ONEDNN_OPTS_VAR] = ONEDNN_OPTS_DEFAULT
    return environ[ONEDNN_OPTS_VAR]


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """Resolved precisions and why they were chosen."""

    precision: str
    teacher_precision: str
    reason: str

    def describe(self):
        return (
            f"precision {self.precision}, teacher precision "
            f"{self.teacher_precision} ({self.reason})"
        )


def auto_precisions(machine):
    """`(precision, teacher_precision, reason)` that `"auto"` means on `machine`."""
    if machine.gpu_capabilities:
        weakest = min(tuple(c) for c in machine.gpu_capabilities)
        shown = f"{weakest[0]}.{weakest[1]}"
        if weakest >= GPU_BF16_CAPABILITY:
            return "mixed_bfloat16", "bfloat16", f"GPU compute capability {shown} >= 8.0"
        return "mixed_float16", "float16", f"GPU compute capability {shown} < 8.0"
    found = [flag for flag in NATIVE_BF16_CPU_FLAGS if flag in machine.cpu_flags]
    if found and machine.onednn_caps_bf16:
        return (
            "float32",
            "float32",
            f"CPU has {', '.join(found)} but ONEDNN_MAX_CPU_ISA={machine.onednn_max_isa} "
            "keeps TensorFlow's kernels below bfloat16, no GPU",
        )
    if found:
        return "mixed_bfloat16", "bfloat16", f"CPU has native bfloat16 ({', '.join(found)})"
    return (
        "float32",
        "float32",
        "CPU without native bfloat16 (no avx512_bf16/amx_bf16 flag), no GPU",
    )


def resolve_precisions(precision, teacher_precision, machine):
    """Replaces `"auto"` in either precision by what `machine` runs fastest.

    Args:
        precision: the trained models' precision, or "auto".
        teacher_precision: the frozen teacher's precision, or "auto".
        machine: a `Machine` (`this_machine()`, or a faked one in tests).

    Returns:
        A `PrecisionChoice`; explicit values pass through unchanged.

    Example:

    >>> avx2 = Machine("AMD EPYC", frozenset({"avx2", "fma"}))
    >>> resolve_precisions("auto", "auto", avx2).precision
    'float32'
    """
    auto, auto_teacher, why = auto_precisions(machine)
    chosen = []
    if precision == AUTO:
        precision = auto
        chosen.append("precision")
    if teacher_precision == AUTO:
        teacher_precision = auto_teacher
        chosen.append("teacher precision")
    reason = f"auto: {why}" if chosen else "as set (a flag or the preset)"
    return PrecisionChoice(precision, teacher_precision, reason)
