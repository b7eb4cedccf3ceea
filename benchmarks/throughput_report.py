"""The throughput benchmark's report: rounds merged, one table per
precision, ratios only between cases of equal precision; `results.json`
and `results.md`."""

import json
import statistics

from benchmarks.throughput_cases import (
    CASES,
    DISTILL_KINDS,
    KD_CASE,
    NO_MODEL,
    PRECISION_ORDER,
    case_precision,
)


def merge_rounds(rounds):
    """One result per case from the results of several rounds: the repeats
    of every round pooled, median and min-max over all of them, the
    highest peak memory."""
    merged = dict(rounds[-1])
    ok = [r for r in rounds if r.get("status") == "ok"]
    if len(ok) != len(rounds):
        failed = next(r for r in rounds if r.get("status") != "ok")
        return {**failed, "rounds": len(rounds)}
    rates = [rate for r in ok for rate in r["images_per_s"]]
    median = statistics.median(rates)
    merged.update(
        rounds=len(rounds),
        images_per_s=rates,
        median_images_per_s=round(median, 2),
        min_images_per_s=round(min(rates), 2),
        max_images_per_s=round(max(rates), 2),
        step_ms=round(merged["batch_size"] / median * 1000, 2),
        peak_rss_mib=max(r["peak_rss_mib"] for r in ok),
        rss_after_import_mib=max(r.get("rss_after_import_mib", 0) for r in ok),
        wall_s=round(sum(r.get("wall_s", 0) for r in rounds), 1),
    )
    return merged


def _ratio(value, reference):
    if not value or not reference:
        return "–"
    return f"{value / reference:.2f}×"


def _result_precision(result):
    if "precision" in result:
        return result["precision"]
    case = CASES.get(result.get("case"), {})
    return case_precision(result.get("kind", case.get("kind")), result.get("options", case))


def report_groups(results):
    """The results split by precision, each group with its own references.

    Returns a list of dicts, one per precision present (float32, bfloat16,
    float16 first, then mixed labels, then the cases without a model):
    `precision`, `results` (in the given order), `torch` (the fastest ok
    PyTorch case at this precision, or None) and `keras` (the ok
    `keras.distillation` case at this precision, or None). A ratio is only
    ever taken inside one group, so no case is divided by a case of another
    precision.
    """
    groups = {}
    for result in results:
        label = _result_precision(result) or NO_MODEL
        groups.setdefault(label, []).append(result)
    order = [p for p in PRECISION_ORDER if p in groups]
    order += [p for p in groups if p not in PRECISION_ORDER and p != NO_MODEL]
    order += [NO_MODEL] if NO_MODEL in groups else []
    report = []
    for label in order:
        rows = groups[label]
        ok = [r for r in rows if r.get("status") == "ok"]
        torch_rows = [r for r in ok if r.get("kind") == "torch"]
        keras_rows = [r for r in ok if r.get("kind") == "keras_distill"]
        report.append(
            {
                "precision": label,
                "results": rows,
                "torch": max(torch_rows, key=lambda r: r["median_images_per_s"], default=None),
                "keras": keras_rows[0] if keras_rows else None,
            }
        )
    return report


def ratios(result, group):
    """`(vs best PyTorch, vs keras.distillation)` of one result of `group`
    (`report_groups`): floats, or None where either side is missing or the
    case is not a distillation step."""
    if result.get("status") != "ok" or result.get("kind") not in DISTILL_KINDS:
        return None, None
    value = result["median_images_per_s"]
    found = []
    for reference in (group["torch"], group["keras"]):
        found.append(value / reference["median_images_per_s"] if reference else None)
    return tuple(found)


def _cell(ratio):
    return "–" if ratio is None else f"{ratio:.2f}×"


def format_group(group):
    """One precision's Markdown table, with a line saying what its ratios compare."""
    label = group["precision"]
    header = ["case", "img/s (median)", "min–max", "step ms", "peak MiB", "+MiB over import"]
    with_ratios = label != NO_MODEL
    if with_ratios:
        header += [f"vs best PyTorch at {label}", f"vs keras.distillation at {label}"]
    header.append("what")
    lines = [f"### {label}", ""]
    if with_ratios:
        torch_ref, keras_ref = group["torch"], group["keras"]
        lines += [
            f"Ratios compare {label} cases only: best PyTorch at {label} = "
            + (f"`{torch_ref['case']}`" if torch_ref else "none measured")
            + f"; keras.distillation at {label} = "
            + (f"`{keras_ref['case']}`" if keras_ref else "none measured")
            + ".",
            "",
        ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in group["results"]:
        if r.get("status") != "ok":
            cells = [f"`{r['case']}`", r.get("status", "failed")] + [""] * (len(header) - 3)
            cells.append(r.get("error", "")[:200].replace("|", "/"))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [
            f"`{r['case']}`",
            f"{r['median_images_per_s']:.1f}",
            f"{r['min_images_per_s']:.1f}–{r['max_images_per_s']:.1f}",
            f"{r['step_ms']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['peak_rss_mib'] - r.get('rss_after_import_mib', 0):.0f}",
        ]
        if with_ratios:
            cells += [_cell(ratio) for ratio in ratios(r, group)]
        what = r["what"]
        reference, label = _reference_case(r["case"], group)
        if reference:
            ratio = r["median_images_per_s"] / reference["median_images_per_s"]
            what += f" ({_cell(ratio)} {label})"
        cells.append(what)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _reference_case(name, group):
    """The ok result of `group` that case `name`'s row is set against, and
    how the row names it: a method's step against `kd_distiller`; a step
    fed by a run's input pipeline against its fixed-batch twin
    (`student_train` for `student_train_pipeline`). `(None, None)` for
    other cases, or when the reference did not run."""
    case = CASES.get(name, {})
    if "method" in case:
        reference, label = KD_CASE, KD_CASE
    elif case.get("pipeline"):
        reference = name.removesuffix("_pipeline")
        label = f"{reference}, its fixed batch"
    else:
        return None, None
    found = next(
        (x for x in group["results"] if x["case"] == reference and x.get("status") == "ok"), None
    )
    return found, label


def format_table(results):
    """The Markdown tables of a list of case results: one per precision."""
    return "\n\n".join(format_group(group) for group in report_groups(results))


def write_report(out, machine, settings, results):
    """Writes results.json and results.md into `out`; returns the tables."""
    groups = report_groups(results)
    table = "\n\n".join(format_group(group) for group in groups)
    by_name = {r["case"]: r for r in results}
    document = {
        "machine": machine,
        "settings": settings,
        # Per precision: the cases its ratios divide by.
        "references": {
            g["precision"]: {
                "pytorch": g["torch"]["case"] if g["torch"] else None,
                "keras_distillation": g["keras"]["case"] if g["keras"] else None,
            }
            for g in groups
            if g["precision"] != NO_MODEL
        },
        "cases": by_name,
    }
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    flags = ", ".join(machine["cpu_flags"]) or "none of note"
    markdown = [
        "# Distillation step throughput",
        "",
        f"- Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores "
        f"(CPU flags: {flags}); precision 'auto' here: "
        f"{' / '.join(machine.get('auto_precision') or ('?', '?'))}",
        f"- TensorFlow {machine['tensorflow']} (TF_ENABLE_ONEDNN_OPTS="
        f"{machine.get('tf_enable_onednn_opts') or 'unset'}), Keras {machine['keras']}, "
        f"PyTorch {machine['torch'] or 'not installed'}, Python {machine['python']}",
        f"- Date: {machine['date']}",
        f"- Teacher ResNet-{settings['teacher_depth']} (width {settings['teacher_width']}), "
        f"student ResNet-{settings['student_depth']} (width {settings['student_width']}), "
        f"batch {settings['batch_size']}; {settings['warmup_steps']} warm-up steps, then "
        f"{settings['repeats']} repeats of {settings['steps']} steps per case, each case "
        f"in its own process; {settings.get('rounds', 1)} interleaved round(s), repeats "
        "pooled.",
        "- One table per precision. Ratios compare median images/s of "
        "distillation steps of the same precision only (a bfloat16 step is "
        "never divided by a float32 one); cases whose student and teacher "
        "differ in precision have no like-for-like reference.",
        "",
        table,
        "",
    ]
    (out / "results.md").write_text("\n".join(markdown))
    return table
