"""The pipeline's stages and their plot colours, free of Keras imports so
front ends (the app) share them with the library."""

STAGES = ("teacher", "student_baseline", "student_distilled")
# The stage `python -m tuning --apply-to` adds to a run (`tuning.run_best`).
TUNED_STAGE = "student_distilled_tuned"
# Every stage name whose files (`models/<stage>.keras`, `history/<stage>.csv`,
# `stages/<stage>.json`, `checkpoints/<stage>/`) `--overwrite` removes.
OWNED_STAGES = (*STAGES, TUNED_STAGE)
# Matplotlib's tab:red, tab:blue, tab:orange, as hex so any plotting library
# can use them; stages added later (e.g. a tuned distillation) are tab:green.
STAGE_COLORS = {
    "teacher": "#d62728",
    "student_baseline": "#1f77b4",
    "student_distilled": "#ff7f0e",
}
EXTRA_STAGE_COLOR = "#2ca02c"
