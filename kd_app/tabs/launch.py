"""The Launch tab: the form that starts `python -m kd_keras run`."""

from pathlib import Path

import streamlit as st

from kd_keras.models.depth import MAX_DEPTH, MIN_DEPTH
from kd_keras.models.specs import application_names_help
from kd_keras.presets import DEFAULT_PRESET, describe_preset

from .. import checks, launching
from .. import run_state as runs
from .common import (
    attempt,
    chosen_teacher,
    on_stop,
    preset_box,
    show_errors,
    show_message,
    teacher_picker,
)

# The launch form's number boxes, in form order: field -> (step, format, help).
NUMBER_INPUTS = {
    "epochs": (1, None, None),
    "temperature": (0.5, "%.2f", "Softmax temperature of the soft targets; must be > 0."),
    "alpha": (
        0.05,
        "%.2f",
        "Weight of the hard-label loss, in [0, 1]; 1 - alpha weights the teacher's soft targets.",
    ),
    "seed": (1, None, None),
    "teacher_depth": (
        1,
        None,
        f"ResNet depth, {MIN_DEPTH} to {MAX_DEPTH}; 6n+2 gives ResNet-20/32/56.",
    ),
    "student_depth": (1, None, f"ResNet depth, {MIN_DEPTH} to {MAX_DEPTH}."),
}
SIZE_HELP = (
    "A whole number, 'all' (every image there is), or empty: the preset's "
    "value on CIFAR-10, a size that follows the data on other data."
)
TEACHER_OUTPUTS_HELP = (
    "What the teacher's last layer gives: auto detects it when the teacher "
    "is loaded (a softmax ending means probabilities); logits or "
    "probabilities say it. Distillation uses log-probabilities for a "
    "probability teacher."
)
METHOD_HELP = (
    "hinton: Hinton KD (the default). dkd: decoupled KD, target and "
    "non-target classes weighted apart. fitnets: the student regresses a "
    "teacher feature map through an adapter that is not shipped. at: "
    "attention transfer of spatial attention maps. docs/methods.md compares them."
)
BUDGET_HELP = (
    "Empty: the preset's epochs. Or a time such as 10m, 90s or 1h: the run is "
    "calibrated on this machine and its epochs (and, below 5 epochs, its "
    "training images) chosen so that all three stages fit; leave Epochs empty."
)
MODEL_HELP = (
    "Empty: a ResNet of the depth above. Or resnet<depth>, a keras.applications "
    f"name ({application_names_help()}; options after a colon, e.g. "
    "mobilenetv3small:alpha=0.35), or a .keras file inside the runs folder."
)


def method_fields():
    """The method, its hyperparameters (those of the chosen method only:
    empty = the method's default) and the time budget."""
    c1, c2, c3 = st.columns([2, 2, 2])
    method = c1.selectbox(
        "Method", launching.METHOD_FIELDS["method"][1], key="method", help=METHOD_HELP
    )
    if method in launching.METHOD_FIELDS["logit_standardization"][1]:
        c1.checkbox(
            "Logit standardization",
            key="logit_standardization",
            help="z-score teacher and student logits before softening (Sun et al. 2024).",
        )
    if method == "dkd":
        c2.number_input(
            "DKD beta",
            value=None,
            min_value=0.0,
            step=1.0,
            key="dkd_beta",
            placeholder="8 (paper)",
            help="Weight of the non-target-class KD term.",
        )
    elif method == "fitnets":
        c2.text_input(
            "Hint layer",
            key="hint_layer",
            placeholder="stage2",
            help="stage1..stage3 of the built-in ResNets, or a layer name of both models.",
        )
    elif method == "at":
        c2.number_input(
            "AT beta",
            value=None,
            min_value=0.0,
            step=100.0,
            key="at_beta",
            placeholder="1000 (paper)",
            help="Weight of the attention-transfer loss.",
        )
    c3.text_input(
        "Time budget", key="budget", placeholder="none: the preset's epochs", help=BUDGET_HELP
    )


def launch_options(data_path):
    """The launch form's values as `LaunchOptions` (from session state)."""
    s = st.session_state
    return launching.LaunchOptions(
        preset=s.get("preset", DEFAULT_PRESET),
        name=(s.get("run_name") or "").strip(),
        data=data_path,
        teacher=chosen_teacher("teacher_choice"),
        teacher_model=(s.get("teacher_model") or "").strip(),
        student_model=(s.get("student_model") or "").strip(),
        strategy="" if s.get("strategy", "default") == "default" else s["strategy"],
        devices=(s.get("devices") or "").strip(),
        sync_batch_norm=bool(s.get("sync_batch_norm")),
        if_exists=s.get("if_exists", "refuse"),
        image_size=s.get("image_size"),
        teacher_outputs=s.get("teacher_outputs", "auto"),
        method=s.get("method", "hinton"),
        logit_standardization=bool(s.get("logit_standardization")),
        dkd_beta=s.get("dkd_beta"),
        hint_layer=(s.get("hint_layer") or "").strip(),
        at_beta=s.get("at_beta"),
        budget=(s.get("budget") or "").strip(),
        **{field: s.get(field) for field in NUMBER_INPUTS},
        **{field: (s.get(field) or "").strip() or None for field in launching.SIZE_LABELS},
    )


@st.cache_data(ttl=30, max_entries=16, show_spinner=False)
def _described(path, stamp, runs_dir):
    """`checks.describe_data`, cached per path and modification time."""
    del stamp  # Part of the cache key only.
    description, errors = checks.describe_data(path, runs_dir)
    return description, errors


def data_facts(data_path, runs_dir):
    """The data source's classes, images and size, shown before launch;
    returns its kind (for the size fields' placeholders)."""
    path, errors = checks.resolve_data(data_path, runs_dir)
    if errors:
        return "cifar10"  # The errors are shown with the form's.
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    description, errors = _described(str(path), stamp, str(runs_dir))
    if errors:
        show_errors(errors)
        return "cifar10"
    st.info(f"**Data**: {description.summary()}")
    if description.per_class and len(description.per_class) > 1:
        with st.expander("Images per class"):
            st.dataframe(
                {
                    "class": list(description.per_class),
                    "images": list(description.per_class.values()),
                },
                hide_index=True,
            )
    return description.kind


def on_start(runs_dir, data_path):
    started = attempt(
        "launch_msg", "Not started. ", launching.start_run, launch_options(data_path), runs_dir
    )
    if not started:
        return
    folder, pid = started
    st.session_state["run"] = folder.name
    st.session_state["launch_msg"] = (
        "success",
        f"Started run '{folder.name}' (process {pid}) in {folder}. "
        "Follow it in the Watch tab; it keeps going if you close this page.",
    )


def launch_tab(runs_dir, data_path):
    st.subheader("Start a run")
    st.caption(
        "Trains a teacher, a student baseline and a distilled student as a "
        "separate `python -m kd_keras run` process; leave a field empty to "
        "use the preset's value."
    )
    preset = preset_box(st, "Preset", "preset", format_func=describe_preset)
    kind = data_facts(data_path, runs_dir)
    placeholders = launching.placeholders(preset, kind)
    columns = st.columns(4) + st.columns(4)
    for column, (field, (step, number_format, text)) in zip(columns, NUMBER_INPUTS.items()):
        column.number_input(
            launching.NUMBER_LABELS[field],
            value=None,
            step=step,
            format=number_format,
            key=field,
            placeholder=placeholders[field],
            help=text,
        )
    columns[len(NUMBER_INPUTS)].text_input(
        "Run name", key="run_name", placeholder=f"auto: {preset}-<date>-<time>"
    )
    sizes = st.columns(len(launching.SIZE_LABELS) + 1)
    for column, (field, label) in zip(sizes, launching.SIZE_LABELS.items()):
        column.text_input(label, key=field, placeholder=placeholders[field], help=SIZE_HELP)
    sizes[-1].number_input(
        launching.IMAGE_SIZE_LABEL,
        value=None,
        min_value=1,
        step=1,
        key="image_size",
        placeholder=placeholders["image_size"],
        help="Resize every image to this square size (8 to 1024); empty: the data's own size.",
    )
    teacher_picker(runs_dir, "teacher_choice", allow_new=True)
    m1, m2, m3 = st.columns([2, 2, 1])
    m1.text_input(
        "Teacher model", key="teacher_model", placeholder="resnet (depth above)", help=MODEL_HELP
    )
    m2.text_input(
        "Student model", key="student_model", placeholder="resnet (depth above)", help=MODEL_HELP
    )
    m3.selectbox(
        "Teacher outputs",
        launching.TEACHER_OUTPUTS,
        key="teacher_outputs",
        help=TEACHER_OUTPUTS_HELP,
    )
    method_fields()
    with st.expander("Devices"):
        d1, d2, d3 = st.columns([1, 2, 1])
        d1.selectbox(
            "Strategy",
            ["default", "mirrored"],
            key="strategy",
            help="default: one device. mirrored: every GPU of this machine "
            "(or the devices listed), one global batch split over them. "
            "Several machines: `--strategy multi_worker` on the command line "
            "(docs/distribute.md).",
        )
        d2.text_input(
            "Devices (mirrored)",
            key="devices",
            placeholder="every GPU",
            help="comma-separated, e.g. /gpu:0,/gpu:1",
        )
        d3.checkbox(
            "Synchronised batch norm",
            key="sync_batch_norm",
            help="batch-norm statistics over the global batch (changes results)",
        )
    st.radio(
        "If the run folder exists",
        list(launching.IF_EXISTS),
        key="if_exists",
        horizontal=True,
        help="resume continues an interrupted run from its last epoch; overwrite replaces it.",
    )

    options = launch_options(data_path)
    resume = options.if_exists == "resume"
    if resume:
        st.info(
            "Resume continues the run named in 'Run name' with the settings "
            "saved in its config.json; the other fields are ignored."
        )
    show_errors(launching.form_errors(options, runs_dir))
    st.button("Start", type="primary", key="start", on_click=on_start, args=(runs_dir, data_path))
    show_message("launch_msg")

    for state in runs.alive_runs(runs_dir):
        c1, c2 = st.columns([4, 1])
        c1.info(f"Run '{state.name}' is {state.status} (process {state.pid}).")
        c2.button(
            "Stop",
            key=f"stop_launch_{state.name}",
            on_click=on_stop,
            args=(state.path, "launch_msg"),
        )
    with st.expander("Command line of this launch"):
        out = Path(runs_dir) / (options.name or f"{preset}-<date>-<time>")
        try:
            argv = (
                launching.resume_command(out, options.data)
                if resume
                else launching.run_command(launching.resolved_options(options, runs_dir), out)
            )
        except ValueError as error:  # LaunchError, or a value of the wrong type.
            argv = [str(error)]
        st.code(" ".join(argv), language="bash")
