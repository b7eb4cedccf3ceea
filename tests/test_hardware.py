"""`precision="auto"`: the rule (faked CPUs and GPUs, no real GPU needed),
its resolution into a run's config, and the module's Keras-free import."""

import dataclasses
import json
import subprocess
import sys

import pytest

from kd_keras.config import RunConfig
from kd_keras.hardware import Machine, read_cpu, resolve_precisions

AVX2_ONLY = Machine("AMD EPYC", frozenset({"avx2", "fma", "sse4_2"}))
AVX512_BF16 = Machine(
    "AMD EPYC", frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"})
)
AVX512_NO_BF16 = Machine("Intel Xeon", frozenset({"avx2", "fma", "avx512f", "avx512bw"}))
AMX = Machine("Intel Xeon Sapphire Rapids", frozenset({"avx2", "amx_tile", "amx_bf16"}))


@pytest.mark.parametrize(
    "machine, expected",
    [
        (AVX2_ONLY, ("float32", "float32")),
        (AVX512_NO_BF16, ("float32", "float32")),
        (AVX512_BF16, ("mixed_bfloat16", "bfloat16")),
        (AMX, ("mixed_bfloat16", "bfloat16")),
        (Machine(), ("float32", "float32")),  # Nothing known: the safe choice.
        (Machine("x", frozenset(), ((8, 0),)), ("mixed_bfloat16", "bfloat16")),
        (Machine("x", frozenset(), ((9, 0), (8, 6))), ("mixed_bfloat16", "bfloat16")),
        (Machine("x", frozenset(), ((7, 5),)), ("mixed_float16", "float16")),
        # The weakest GPU decides; a GPU decides over the CPU's flags.
        (Machine("x", AVX512_BF16.cpu_flags, ((8, 0), (7, 0))), ("mixed_float16", "float16")),
    ],
    ids=[
        "avx2",
        "avx512-no-bf16",
        "avx512-bf16",
        "amx",
        "unknown",
        "gpu-8.0",
        "gpus-9.0-8.6",
        "gpu-7.5",
        "mixed-gpus",
    ],
)
def test_auto_resolves_from_cpu_flags_and_gpu_capabilities(machine, expected):
    choice = resolve_precisions("auto", "auto", machine)
    assert (choice.precision, choice.teacher_precision) == expected
    assert choice.reason.startswith("auto: ")


def test_explicit_values_are_never_changed():
    choice = resolve_precisions("mixed_bfloat16", "bfloat16", AVX2_ONLY)
    assert (choice.precision, choice.teacher_precision) == ("mixed_bfloat16", "bfloat16")
    assert choice.reason == "as set (a flag or the preset)"
    mixed = resolve_precisions("float32", "auto", AVX512_BF16)
    assert (mixed.precision, mixed.teacher_precision) == ("float32", "bfloat16")


def test_reason_names_the_flag_that_decided():
    assert "avx512_bf16" in resolve_precisions("auto", "auto", AVX512_BF16).reason
    assert "amx_bf16" in resolve_precisions("auto", "auto", AMX).reason
    assert "7.5" in resolve_precisions("auto", "auto", Machine("x", frozenset(), ((7, 5),))).reason


def test_cpuinfo_is_parsed_for_model_and_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 fma avx512f "
        "avx512_bf16\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu\n"
    )
    model, flags = read_cpu(cpuinfo)
    assert model == "AMD EPYC 9R14"
    assert {"avx2", "avx512_bf16"} <= flags and "fpu" in flags
    machine = Machine(model, flags)
    assert machine.speed_flags() == ["avx2", "avx512_bf16", "avx512f", "fma"]
    assert "AMD EPYC 9R14 (avx2 avx512_bf16 avx512f fma)" == machine.describe()
    assert read_cpu(tmp_path / "missing")[1] == frozenset()


def test_run_config_resolution_and_resume_rule():
    from kd_keras.train.speed import resolve_run_precisions

    auto = RunConfig.from_preset("quick")
    assert (auto.precision, auto.teacher_precision) == ("auto", "auto")
    assert not auto.is_resolved()
    resolved, choice = resolve_run_precisions(auto, AVX512_BF16)
    assert resolved.is_resolved() and resolved is not auto
    assert (resolved.precision, resolved.teacher_precision) == ("mixed_bfloat16", "bfloat16")
    # A resumed run asked with "auto" keeps what it saved, on any machine.
    assert resolved.result_differences(auto) == []
    # An explicit different value is a difference.
    assert resolved.result_differences(RunConfig.from_preset("quick", precision="float32")) == [
        "precision"
    ]
    same, _ = resolve_run_precisions(resolved, AVX2_ONLY)
    assert same is resolved


@pytest.mark.slow
def test_run_records_resolved_precisions(tmp_path, cifar10_archive, monkeypatch):
    """A run started with "auto" writes the resolved values to config.json."""
    from kd_keras.train import speed
    from kd_keras.train.pipeline import run_pipeline

    monkeypatch.setattr(speed, "local_machine", lambda: AVX2_ONLY)
    config = RunConfig.from_preset(
        "smoke",
        data=str(cifar10_archive),
        precision="auto",
        teacher_precision="auto",
        teacher_epochs=1,
        student_epochs=1,
        train_per_class=10,
        verbose=0,
    )
    run_pipeline(config, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["precision"], saved["teacher_precision"]) == ("float32", "float32")


def test_dry_run_says_what_auto_chose(capsys, monkeypatch):
    from kd_keras.cli import main
    from kd_keras.train import speed

    monkeypatch.setattr(speed, "local_machine", lambda: AVX512_BF16)
    assert (
        main(
            [
                "run",
                "--preset",
                "smoke",
                "--precision",
                "auto",
                "--teacher-precision",
                "auto",
                "--epochs",
                "1",
                "--dry-run",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    config = json.loads(out[: out.index("}\n") + 1])
    assert (config["precision"], config["teacher_precision"]) == ("mixed_bfloat16", "bfloat16")
    assert "auto: CPU has native bfloat16 (avx512_bf16)" in err


def test_hardware_and_config_import_no_tensorflow():
    code = (
        "import sys, kd_keras.hardware, kd_keras.config;"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_a_onednn_isa_cap_below_bfloat16_means_float32(monkeypatch):
    from kd_keras.hardware import onednn_max_isa, this_machine

    capped = dataclasses.replace(AVX512_BF16, onednn_max_isa="AVX2")
    choice = resolve_precisions("auto", "auto", capped)
    assert (choice.precision, choice.teacher_precision) == ("float32", "float32")
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in choice.reason
    assert not capped.native_bf16_cpu and AVX512_BF16.native_bf16_cpu
    for isa in ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_AMX"):
        kept = dataclasses.replace(AVX512_BF16, onednn_max_isa=isa)
        assert resolve_precisions("auto", "auto", kept).precision == "mixed_bfloat16"
    assert onednn_max_isa({"DNNL_MAX_CPU_ISA": " avx512_core "}) == "AVX512_CORE"
    assert onednn_max_isa({}) == ""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    machine = this_machine()
    assert machine.onednn_max_isa == "AVX2" and "ONEDNN_MAX_CPU_ISA=AVX2" in machine.describe()


def test_onednn_kernels_are_switched_on_unless_the_user_chose(monkeypatch):
    from kd_keras.hardware import ONEDNN_OPTS_VAR, enable_onednn_opts, this_machine

    env = {}
    assert enable_onednn_opts(env) == "1" and env == {ONEDNN_OPTS_VAR: "1"}
    env = {ONEDNN_OPTS_VAR: "0"}
    assert enable_onednn_opts(env) == "0" and env == {ONEDNN_OPTS_VAR: "0"}
    env = {ONEDNN_OPTS_VAR: " "}
    assert enable_onednn_opts(env) == "1"
    # A figure taken with the kernels off says so; the default is not named.
    monkeypatch.delenv(ONEDNN_OPTS_VAR, raising=False)
    assert ONEDNN_OPTS_VAR not in this_machine().describe()
    monkeypatch.setenv(ONEDNN_OPTS_VAR, "0")
    assert this_machine().describe().endswith(f"; {ONEDNN_OPTS_VAR}=0")


@pytest.mark.parametrize("given, expected", [(None, "1 True"), ("0", "0 False")])
def test_front_ends_start_tensorflow_with_its_onednn_kernels(given, expected):
    """TensorFlow turns its oneDNN kernels on by itself only on CPUs with
    AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX; a front end's start turns
    them on everywhere, and a user's TF_ENABLE_ONEDNN_OPTS=0 stays."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    code = (
        "import os; from kd_keras.quiet import start_tensorflow; start_tensorflow(); "
        "from tensorflow.python.util import _pywrap_util_port as port; "
        "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], port.IsMklEnabled())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert out.strip().splitlines()[-1] == expected
