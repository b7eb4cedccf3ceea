"""The benchmark report: one table per precision, ratios only between cases
of equal precision (fabricated results; nothing is timed)."""

import json

import pytest

from benchmarks import torch_resnet
from benchmarks.throughput_cases import CASES, case_precision
from benchmarks.throughput_report import format_table, ratios, report_groups, write_report


def row(case, kind, precision, images_per_s, status="ok"):
    result = {"case": case, "kind": kind, "what": case, "precision": precision, "status": status}
    if status == "ok":
        result.update(
            median_images_per_s=images_per_s,
            min_images_per_s=images_per_s,
            max_images_per_s=images_per_s,
            step_ms=128 / images_per_s * 1000,
            peak_rss_mib=900.0,
            rss_after_import_mib=500.0,
        )
    else:
        result["error"] = "needs a CUDA GPU"
    return result


RESULTS = [
    row("kd_distiller", "distill", "float32", 600.0),
    row("kd_distiller_bf16_both", "distill", "bfloat16", 1200.0),
    row("kd_distiller_bf16", "distill", "student bfloat16, teacher float32", 900.0),
    row("keras_distiller", "keras_distill", "float32", 500.0),
    row("keras_distiller_bf16", "keras_distill", "bfloat16", 800.0),
    row("torch_channels_last", "torch", "float32", 400.0),
    row("torch_channels_last_compile", "torch", "float32", 300.0),
    row("torch_channels_last_compile_bf16", "torch", "bfloat16", 1000.0),
    row("torch_channels_last_fp16", "torch", "float16", 0, status="skipped"),
    row("student_train", "train", "float32", 1700.0),
    row("input_pipeline", "input", None, 26000.0),
]


def groups_by_precision(results):
    return {group["precision"]: group for group in report_groups(results)}


def test_ratios_divide_only_by_cases_of_the_same_precision():
    groups = groups_by_precision(RESULTS)
    assert list(groups) == [
        "float32",
        "bfloat16",
        "float16",
        "student bfloat16, teacher float32",
        "no model",
    ]
    float32, bf16 = groups["float32"], groups["bfloat16"]
    # The fastest PyTorch case of each precision, not the fastest overall.
    assert float32["torch"]["case"] == "torch_channels_last"
    assert bf16["torch"]["case"] == "torch_channels_last_compile_bf16"
    assert float32["keras"]["case"] == "keras_distiller"
    assert bf16["keras"]["case"] == "keras_distiller_bf16"
    kd_bf16 = next(r for r in bf16["results"] if r["case"] == "kd_distiller_bf16_both")
    assert ratios(kd_bf16, bf16) == pytest.approx((1.2, 1.5))  # 1200/1000, 1200/800.
    kd_fp32 = next(r for r in float32["results"] if r["case"] == "kd_distiller")
    assert ratios(kd_fp32, float32) == pytest.approx((1.5, 1.2))  # 600/400, 600/500.
    # Not a distillation step: no ratio.
    train = next(r for r in float32["results"] if r["case"] == "student_train")
    assert ratios(train, float32) == (None, None)


def test_a_precision_without_its_own_pytorch_case_gets_no_ratio():
    # Only float32 PyTorch ran: the bfloat16 step must not be divided by it.
    results = [
        row("kd_distiller_bf16_both", "distill", "bfloat16", 1200.0),
        row("torch_channels_last", "torch", "float32", 400.0),
        row("keras_distiller", "keras_distill", "float32", 500.0),
    ]
    groups = groups_by_precision(results)
    bf16 = groups["bfloat16"]
    assert bf16["torch"] is None and bf16["keras"] is None
    assert ratios(bf16["results"][0], bf16) == (None, None)
    table = format_table(results)
    bf16_line = next(line for line in table.splitlines() if "kd_distiller_bf16_both" in line)
    assert "3.00×" not in bf16_line and "2.40×" not in bf16_line
    assert [cell.strip() for cell in bf16_line.split("|")][7:9] == ["–", "–"]
    assert "best PyTorch at bfloat16 = none measured" in table


def test_mixed_precision_steps_are_compared_with_nothing():
    groups = groups_by_precision(RESULTS)
    mixed = groups["student bfloat16, teacher float32"]
    assert mixed["torch"] is None and mixed["keras"] is None
    assert ratios(mixed["results"][0], mixed) == (None, None)


def test_markdown_has_one_table_per_precision_with_labelled_ratio_columns(tmp_path):
    machine = {
        "cpu_model": "Test CPU",
        "cpu_flags": ["avx512_bf16"],
        "auto_precision": ["mixed_bfloat16", "bfloat16"],
        "usable_cores": 2,
        "tensorflow": "2.21.0",
        "keras": "3.15.1",
        "torch": "2.13.0",
        "python": "3.12",
        "date": "2026-12-06",
    }
    settings = {
        "teacher_depth": 32,
        "teacher_width": 16,
        "student_depth": 14,
        "student_width": 16,
        "batch_size": 128,
        "warmup_steps": 2,
        "repeats": 1,
        "steps": 2,
    }
    table = write_report(tmp_path, machine, settings, RESULTS)
    markdown = (tmp_path / "results.md").read_text()
    assert table in markdown
    headings = [line for line in markdown.splitlines() if line.startswith("### ")]
    assert headings == [
        "### float32",
        "### bfloat16",
        "### float16",
        "### student bfloat16, teacher float32",
        "### no model",
    ]
    assert "| vs best PyTorch at bfloat16 | vs keras.distillation at bfloat16 |" in markdown
    kd_line = next(line for line in markdown.splitlines() if "`kd_distiller_bf16_both`" in line)
    assert "| 1.20× | 1.50× |" in kd_line
    skipped = next(line for line in markdown.splitlines() if "`torch_channels_last_fp16`" in line)
    assert "skipped" in skipped and "CUDA" in skipped
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["references"]["bfloat16"] == {
        "pytorch": "torch_channels_last_compile_bf16",
        "keras_distillation": "keras_distiller_bf16",
    }
    assert document["references"]["float16"] == {"pytorch": None, "keras_distillation": None}


@pytest.mark.parametrize(
    "kind, options, expected",
    [
        ("distill", {"precision": "float32", "teacher_precision": "float32"}, "float32"),
        ("distill", {"precision": "mixed_bfloat16", "teacher_precision": "bfloat16"}, "bfloat16"),
        (
            "keras_distill",
            {"precision": "mixed_float16", "teacher_precision": "float16"},
            "float16",
        ),
        (
            "distill",
            {"precision": "float32", "teacher_precision": "bfloat16"},
            "student float32, teacher bfloat16",
        ),
        ("forward", {"precision": "float32", "teacher_precision": "bfloat16"}, "bfloat16"),
        ("train", {"precision": "mixed_bfloat16"}, "bfloat16"),
        ("torch", {"precision": "bfloat16"}, "bfloat16"),
        ("torch", {}, "float32"),
        ("input", {}, None),
    ],
)
def test_case_precision(kind, options, expected):
    assert case_precision(kind, options) == expected


def test_torch_cases_agree_with_the_torch_variants():
    torch_cases = {name: case for name, case in CASES.items() if case["kind"] == "torch"}
    assert set(torch_cases) == set(torch_resnet.VARIANTS)
    for name, case in torch_cases.items():
        options = torch_resnet.variant_options(name)
        assert case_precision("torch", case) == options["precision"]
        assert case.get("gpu", False) == (options["device"] == "cuda")
    precisions = {case_precision("torch", case) for case in torch_cases.values()}
    assert precisions == {"float32", "bfloat16", "float16"}
    # Every precision with a PyTorch case also has a keras.distillation case.
    keras_precisions = {
        case_precision("keras_distill", case)
        for case in CASES.values()
        if case["kind"] == "keras_distill"
    }
    assert keras_precisions == precisions


def test_epoch_time_sets_each_epoch_against_the_step_times_timed_around_it():
    from benchmarks.epoch_time import summarise

    steady = {
        "teacher_train_step_s": 0.1,
        "student_train_step_s": 0.05,
        "teacher_forward_batch_s": 0.02,
        "student_forward_batch_s": 0.01,
    }
    slower = {key: value * 1.2 for key, value in steady.items()}  # The machine drifted.

    def epoch(number, epoch_s, steps_s, before=steady, after=steady):
        return {
            "epoch": number,
            "epoch_s": epoch_s,
            "steps_s": steps_s,
            "step_times_before": before,
            "step_times_after": after,
        }

    epochs = {
        # The first epoch (tracing) is left out of the medians.
        "teacher": [
            epoch(1, 30.0, 25.0),
            epoch(2, 11.0, 10.0),
            epoch(3, 13.2, 10.4, after=slower),
        ],
        "student_baseline": [epoch(1, 9.0, 8.0), epoch(2, 6.0, 5.0)],
        "student_distilled": [epoch(1, 9.0, 8.0), epoch(2, 8.4, 7.0)],
    }
    rows = {r["stage"]: r for r in summarise(epochs, 100, 10)}
    teacher = rows["teacher"]
    assert teacher["epochs_timed"] == 2 and teacher["first_epoch_s"] == 30.0
    assert teacher["epoch_s"] == 12.1 and teacher["steps_s"] == 10.2
    assert teacher["rest_s"] == pytest.approx(1.9)
    # Epoch 2 against 0.1 s x 100 steps; epoch 3 against the mean of the
    # step timed before it (0.1 s) and after it (0.12 s): 11 s.
    assert teacher["epoch_vs_step_x_steps_each"] == [1.1, 1.2]
    assert teacher["step_x_steps_s"] == 10.5 and teacher["epoch_vs_step_x_steps"] == 1.15
    # Plus 10 validation batches x the teacher's forward pass timed around.
    assert teacher["estimate_s"] == pytest.approx((10.2 + 11.22) / 2, abs=1e-3)
    assert rows["student_baseline"]["epoch_vs_step_x_steps"] == 1.2
    distilled = rows["student_distilled"]
    # A distillation step is a student step plus a teacher forward pass.
    assert distilled["step_x_steps_s"] == 7.0
    assert distilled["epoch_vs_step_x_steps"] == 1.2
    # Its validation runs the student alone: the teacher's logits of the
    # validation images are computed once a stage.
    assert distilled["estimate_s"] == 7.1
    live = {r["stage"]: r for r in summarise(epochs, 100, 10, teacher_logits_reused=False)}
    assert live["student_distilled"]["estimate_s"] == 7.3
    assert live["teacher"]["estimate_s"] == teacher["estimate_s"]


def test_search_workers_reads_each_searchs_trials_and_compares_them(tmp_path):
    import csv

    from benchmarks import search_workers
    from kd_keras.search_folder import TRIAL_COLUMNS

    folder = tmp_path / "workers"
    folder.mkdir()
    with open(folder / "trials.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        for trial_id, seconds, status in (("00", 50, "COMPLETED"), ("01", 70, "COMPLETED")):
            writer.writerow({"trial_id": trial_id, "seconds": seconds, "status": status})
        writer.writerow({"trial_id": "02", "status": "FAILED"})
    (folder / "search.json").write_text('{"workers": {"00": "worker1", "01": "worker2"}}')
    figures = search_workers.search_figures(folder, 360.0)
    assert figures == {
        "wall_seconds": 360.0,
        "completed_trials": 2,
        "mean_trial_seconds": 60.0,
        "trials_per_hour": 20.0,
        "workers_seen": ["worker1", "worker2"],
    }
    summary = {
        "date": "2026-12-07",
        "machine": "CPU (avx2)",
        "cores": 2,
        "preset": "quick",
        "trials": 2,
        "epochs": 2,
        "seed": 0,
        "searches": {"one-process": dict(figures, trials_per_hour=12.5), "workers": figures},
        "ratio": 1.6,
    }
    table = search_workers.format_table(summary)
    assert "| 1 process x 2 threads | 360.0 | 2 | 60.0 | 12.5 |" in table
    assert "| 2 workers x 1 thread | 360.0 | 2 | 60.0 | 20.0 |" in table
    assert "1.6x the trials per hour" in table
    argv = search_workers.search_argv(
        type(
            "A", (), dict(teacher="t.keras", preset="quick", trials=6, epochs=2, seed=0, data=None)
        ),
        folder,
        "workers",
        2,
    )
    assert argv[-2:] == ["--workers", "2"] and "--threads" not in argv
    fields = dict(teacher="t.keras", preset="quick", trials=6, epochs=2, seed=0, data=None)
    plain = search_workers.search_argv(
        type("A", (), dict(fields, one_process_threads="tensorflow")), folder, "one-process", 2
    )
    assert "--threads" not in plain and "--workers" not in plain
    threads = search_workers.search_argv(
        type("A", (), dict(fields, one_process_threads="cores")), folder, "one-process", 2
    )
    assert threads[-2:] == ["--threads", "2"]
    summary["one_process_threads"] = "tensorflow"
    assert "| 1 process x 2 threads, TensorFlow's threading |" in search_workers.format_table(
        summary
    )


def test_onednn_profile_takes_the_steady_step_from_two_verbose_runs():
    from benchmarks.onednn_profile import parse_verbose, per_step

    def run(steps):
        # Set-up (a reorder, once) and `steps` steps of 2 forward
        # convolutions (1.5 ms each) and one backward-weights (4 ms).
        lines = [
            "onednn_verbose,v1,info,oneDNN v3.7.3 (commit N/A)",
            "onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,jit:avx2,"
            "forward_training,src:f32,,,mb128_ic3oc16,0.9",
            "onednn_verbose,v1,primitive,exec,cpu,reorder,simple:any,undef,src:f32,,,128x3,7.0",
            "some other output",
        ]
        for _ in range(steps):
            lines += [
                "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,"
                "src:f32::blocked:acdb::f0,,alg:convolution_direct,mb128_ic3oc16,1.5",
            ] * 2
            # An older oneDNN's line, without "v1".
            lines.append(
                "onednn_verbose,primitive,exec,cpu,convolution,jit:avx2,backward_weights,"
                "src:f32,,alg:convolution_direct,mb128_ic16oc16,4.0"
            )
        return parse_verbose(lines)

    few, many = run(4), run(12)
    assert few[("reorder", "undef")] == [7.0, 1]
    assert few[("convolution", "forward_training")] == [12.0, 8]
    steady = per_step(few, many, 8)
    assert steady == {
        ("convolution", "forward_training"): (3.0, 2.0),
        ("convolution", "backward_weights"): (4.0, 1.0),
    }


def test_worker_scaling_adds_the_processes_and_divides_by_the_one_alone():
    from benchmarks import worker_scaling

    one = dict(row("student_train", "train", "float32", 1000.0), timed_window=[0.0, 10.0])
    workers = [
        dict(row("student_train", "train", "float32", 700.0), timed_window=[100.0, 110.0]),
        dict(row("student_train", "train", "float32", 650.0), timed_window=[101.0, 112.0]),
    ]
    figures = worker_scaling.summarise(one, workers)
    assert figures["workers"]["images_per_s_together"] == 1350.0
    assert figures["ratio"] == 1.35
    # Both in their timed steps from 101 to 110: 9 s of the shorter 10 s.
    assert figures["workers"]["timed_overlap"] == 0.9
    assert worker_scaling.overlap([[0.0, 5.0], [6.0, 9.0]]) == 0.0
    machine = {
        "cpu_model": "CPU",
        "cpu_flags": ["avx2", "fma"],
        "usable_cores": 2,
        "tensorflow": "2.21.0",
        "date": "2026-12-07T17:00:00+00:00",
    }
    summary = {
        "case": "student_train",
        "machine": machine,
        "settings": {"batch_size": 128, "repeats": 3, "steps": 40},
        "ratio": 1.35,
        "ratio_range": [1.3, 1.35],
        "rounds": [figures, dict(figures, ratio=1.3)],
    }
    table = worker_scaling.format_table(summary)
    assert "CPU: CPU (avx2 fma); 2 usable cores; TensorFlow 2.21.0; 2026-12-07." in table
    assert "| 1 | 1000.0 | 700.0, 650.0 | 1350.0 | 1.35x | 90% |" in table
    assert "| 2 | 1000.0 | 700.0, 650.0 | 1350.0 | 1.3x | 90% |" in table
    assert "**1.35x**" in table and "median of 2 round(s), 1.3-1.35x" in table
    failed = dict(row("student_train", "train", "float32", 0, status="failed"))
    with pytest.raises(RuntimeError, match="a process failed: needs a CUDA GPU"):
        worker_scaling.summarise(one, [workers[0], failed])


@pytest.mark.slow
def test_worker_scaling_runs_single_thread_processes_together(tmp_path):
    from benchmarks import worker_scaling

    argv = ["--workers", "2", "--steps", "20", "--repeats", "2", "--warmup-steps", "1"]
    argv += ["--rounds", "1"]
    argv += ["--batch-size", "8", "--student-depth", "8", "--student-width", "4"]
    assert worker_scaling.main([*argv, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / worker_scaling.RESULTS_JSON).read_text())
    (processes,) = summary["processes"]
    one, workers = processes["one_process"], processes["workers"]
    assert one["status"] == "ok" and one["options"]["threads"] is None
    assert [w["options"]["threads"] for w in workers] == [1, 1]
    assert all(w["status"] == "ok" and len(w["images_per_s"]) == 2 for w in workers)
    (figures,) = summary["rounds"]
    together = sum(w["median_images_per_s"] for w in workers)
    assert figures["workers"]["images_per_s_together"] == pytest.approx(together, abs=0.01)
    assert figures["ratio"] == pytest.approx(together / one["median_images_per_s"], abs=0.01)
    assert summary["ratio"] == figures["ratio"]
    # The barrier: neither process began its timed steps before the other
    # had finished its warm-up, so the timed windows overlap.
    starts = [w["timed_window"][0] for w in workers]
    ends = [w["timed_window"][1] for w in workers]
    assert max(starts) < min(ends) and figures["workers"]["timed_overlap"] > 0
    assert not list(tmp_path.glob("barrier-*"))  # The barrier folder is removed.
    assert "single-thread processes / 1 process" in (tmp_path / "worker_scaling.md").read_text()


@pytest.mark.parametrize("module", ["throughput", "worker_scaling", "onednn_profile"])
def test_every_benchmark_needs_a_warmup_step_to_mark_where_timing_starts(module, capsys):
    import importlib

    get_args = importlib.import_module(f"benchmarks.{module}").get_args
    for argv, message in (
        (["--warmup-steps", "0"], "--warmup-steps must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ):
        with pytest.raises(SystemExit) as error:
            get_args(argv)
        assert error.value.code == 2
        assert message in capsys.readouterr().err
    assert get_args(["--warmup-steps", "1"]).warmup_steps == 1


@pytest.mark.slow
def test_epoch_time_times_the_fixed_batch_step_around_every_epoch(tmp_path):
    from benchmarks import epoch_time

    argv = ["--epochs", "2", "--train-images", "100", "--val-images", "40", "--test-images", "20"]
    argv += ["--calibration-steps", "1", "--out", str(tmp_path)]
    from kd_keras.train import distribute

    fit = distribute.fit
    assert epoch_time.main(argv) == 0
    assert distribute.fit is fit  # Later runs in this process are not clocked.
    document = json.loads((tmp_path / "epoch_time.json").read_text())
    stages = document["epochs"]
    assert list(stages) == ["teacher", "student_baseline", "student_distilled"]
    keys = {
        "teacher_train_step_s",
        "student_train_step_s",
        "teacher_forward_batch_s",
        "student_forward_batch_s",
    }
    for records in stages.values():
        assert [r["epoch"] for r in records] == [1, 2]
        # Each epoch's "after" timing is the next epoch's "before".
        assert records[0]["step_times_after"] == records[1]["step_times_before"]
        for record in records:
            assert set(record["step_times_before"]) == keys
            assert 0 < record["steps_s"] < record["epoch_s"]
    rows = {row["stage"]: row for row in document["stages"]}
    teacher = stages["teacher"][1]
    around = (
        teacher["step_times_before"]["teacher_train_step_s"]
        + teacher["step_times_after"]["teacher_train_step_s"]
    ) / 2
    assert rows["teacher"]["step_x_steps_s"] == pytest.approx(around * 2, abs=1e-3)  # 2 steps.
    assert document["timing_seconds"] > 0 and document["run_seconds"] > 0
    assert (
        "just after it (the models in turns, 1 round)" in (tmp_path / "epoch_time.md").read_text()
    )


def test_a_case_fed_by_the_input_pipeline_is_set_against_its_fixed_batch_twin():
    results = [
        row("student_train", "train", "float32", 1000.0),
        row("student_train_pipeline", "train", "float32", 950.0),
        row("kd_distiller_pipeline", "distill", "float32", 500.0),  # Its twin did not run.
    ]
    lines = {line.split("`")[1]: line for line in format_table(results).splitlines() if "`" in line}
    assert "(0.95× student_train, its fixed batch)" in lines["student_train_pipeline"]
    assert "its fixed batch" not in lines["student_train"]
    assert "its fixed batch" not in lines["kd_distiller_pipeline"]
    # A method's step is set against Hinton KD's, by the same mechanism.
    methods = [row("kd_distiller", "distill", "float32", 600.0)]
    methods.append(row("kd_method_dkd", "distill", "float32", 660.0))
    assert "kd_method_dkd (1.10× kd_distiller) |" in format_table(methods)
