"""What a search folder says: its trial rows, best trial and plot.

`trials.csv`, `best.json` and `search.png` are rewritten from the tuner's
trials after every trial (`write_search_outputs`); `load_trials` and
`load_best` read them back.
"""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from kd_keras import atomic
from kd_keras.errors import SearchError
from kd_keras.search_folder import (
    BEST_FILE,
    OBJECTIVE,
    SEARCH_FILE,
    SEARCH_PLOT,
    TRIAL_COLUMNS,
    TRIAL_COMPLETED,
    TRIAL_FILE,
    TRIALS_FILE,
)


def _metric(trial, name, best=False):
    if not trial.metrics.exists(name):
        return None
    value = trial.metrics.get_best_value(name) if best else trial.metrics.get_last_value(name)
    return None if value is None or not math.isfinite(float(value)) else float(value)


def trial_rows(tuner):
    """One dict per trial of `tuner`, in trial order, as in `trials.csv`.

    `val_accuracy` is the trial's best-epoch validation accuracy (its score),
    `val_loss` the student's validation cross-entropy at that epoch (the
    same quantity in every trial, unlike `distiller_val_loss`, the blended
    distillation loss at the trial's T and alpha), `epochs` the epochs the
    student had trained when the trial ended, `best_epoch` the epoch of the
    best score, `seconds` the trial's wall time.
    """
    rows = []
    config = getattr(getattr(tuner, "hypermodel", None), "config", None)
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id)):
        values = trial.hyperparameters.values
        method = values.get("method") or getattr(config, "method", None)
        dkd_beta = values.get("dkd_beta")
        if dkd_beta is None and method == "dkd":
            dkd_beta = getattr(config, "dkd_beta", None)
        extra = (
            atomic.read_json(Path(tuner.project_dir) / f"trial_{trial.trial_id}" / TRIAL_FILE, {})
            or {}
        )
        completed = trial.status == TRIAL_COMPLETED
        best_step = getattr(trial, "best_step", None)
        initial_epoch = int(values.get("tuner/initial_epoch", 0))
        rows.append(
            {
                "trial_id": trial.trial_id,
                "temperature": float(values["temperature"]) if "temperature" in values else None,
                "alpha": float(values["alpha"]) if "alpha" in values else None,
                "method": method,
                "dkd_beta": float(dkd_beta) if method == "dkd" and dkd_beta is not None else None,
                "val_accuracy": _metric(trial, OBJECTIVE, best=True) if completed else None,
                "seed_scores": (extra.get("seed_scores") or None) if completed else None,
                "seed_sd": _sample_sd(extra.get("seed_scores")) if completed else None,
                # The metrics kept per trial are those of its best epoch.
                "val_loss": _metric(trial, "val_student_loss") if completed else None,
                "epochs": extra.get("epochs"),
                "seconds": extra.get("seconds"),
                "best_epoch": (initial_epoch + int(best_step) + 1)
                if completed and best_step is not None
                else None,
                "distiller_val_loss": _metric(trial, "val_loss") if completed else None,
                "status": trial.status,
                "error": extra.get("error"),
            }
        )
    return rows


def _sample_sd(values):
    """The sample standard deviation of two or more numbers, else None."""
    values = [float(v) for v in values or () if v is not None and math.isfinite(float(v))]
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def best_row(rows, val_images=None, default=None):
    """The completed trial with the highest val accuracy (earliest on ties),
    as the `best.json` dict, or `None` if no trial completed.

    With `val_images` (the validation split's size), the dict also holds the
    score's binomial standard error (`score_se`) and whether it beats the
    next best trial by more than 2 standard errors of their difference
    (`runner_up_score`, `margin_se`, `beats_runner_up`); with `default`
    (`{"temperature", "alpha"}`) and a completed trial of those values, the
    same against it (`default_trial_id`, `default_score`,
    `default_margin_se`, `beats_default`).

    A trial scored as the mean of k >= 2 seeds (`--trial-seeds`) adds the
    seeds' spread to its noise: its standard error is sqrt(se_split**2 +
    sd_seeds**2 / k), where se_split is the binomial one above (the seeds
    share the validation split, so it does not shrink with k), and
    `seed_scores`, `seed_sd` and `split_se` are kept. `ci95` is the score
    +- 1.96 standard errors."""
    completed = [
        r
        for r in rows
        if r["status"] == TRIAL_COMPLETED
        and r["val_accuracy"] is not None
        and math.isfinite(r["val_accuracy"])
    ]
    if not completed:
        return None
    ranked = sorted(completed, key=lambda r: (-r["val_accuracy"], int(r["trial_id"])))
    best = ranked[0]
    row = {
        "trial_id": best["trial_id"],
        "temperature": best["temperature"],
        "alpha": best["alpha"],
        **{key: best[key] for key in ("method", "dkd_beta") if best.get(key) is not None},
        "score": best["val_accuracy"],
        "objective": OBJECTIVE,
        "val_loss": best["val_loss"],
        "epochs": best["epochs"],
        "completed_trials": len(completed),
    }
    if best.get("seed_scores"):
        row.update(seed_scores=best["seed_scores"], seed_sd=best.get("seed_sd"))
    if val_images:
        row.update(noise(best, val_images, ranked[1:2]))
        match = _default_trial(completed, default)
        if match is not None:
            facts = noise(best, val_images, [match])
            row.update(
                default_trial_id=match["trial_id"],
                default_score=match["val_accuracy"],
                default_margin_se=facts["margin_se"],
                beats_default=facts["beats_runner_up"],
            )
    return row


def _default_trial(completed, default):
    """The earliest completed trial at the default T and alpha (and method,
    when the search chooses it), or None."""
    if not default:
        return None
    for row in sorted(completed, key=lambda r: int(r["trial_id"])):
        if "method" in default and row.get("method") != default["method"]:
            continue
        if math.isclose(row["temperature"], default["temperature"], rel_tol=1e-6) and math.isclose(
            row["alpha"], default["alpha"], rel_tol=1e-6, abs_tol=1e-9
        ):
            return row
    return None


def standard_error(accuracy, images):
    """The binomial standard error of an accuracy measured on `images`
    images: sqrt(p (1 - p) / n)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / images)


def score_noise(row, val_images):
    """`(standard error, split's binomial standard error)` of a trial row's
    score: the split's alone, or with the seeds' spread (see `best_row`)."""
    split = standard_error(row["val_accuracy"], val_images)
    sd, seeds = row.get("seed_sd"), len(row.get("seed_scores") or ())
    if sd is None or seeds < 2:
        return split, split
    return math.sqrt(split**2 + sd**2 / seeds), split


def noise(best, val_images, runners_up):
    """The best trial's noise: its standard error and 95 % interval, and
    whether it beats the next best trial by more than the noise of their
    difference (2 standard errors of the difference of two independent
    scores)."""
    score = best["val_accuracy"]
    se, split = score_noise(best, val_images)
    facts = {
        "val_images": int(val_images),
        "score_se": se,
        "ci95": [score - 1.96 * se, score + 1.96 * se],
    }
    if se != split:
        facts["split_se"] = split
    if runners_up:
        second = runners_up[0]["val_accuracy"]
        margin = score - second
        noise_of_margin = math.hypot(se, score_noise(runners_up[0], val_images)[0])
        facts.update(
            runner_up_trial_id=runners_up[0]["trial_id"],
            runner_up_score=second,
            margin_se=noise_of_margin,
            beats_runner_up=bool(margin > 2 * noise_of_margin),
        )
    return facts


def write_search_outputs(tuner, folder=None):
    """Writes `trials.csv`, `best.json` and `search.png` of a tuner's trials.

    Args:
        tuner: a keras-tuner `Tuner`.
        folder: where to write; defaults to the tuner's project folder.

    Returns:
        The trial rows.
    """
    folder = Path(folder or tuner.project_dir)
    rows = trial_rows(tuner)
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=TRIAL_COLUMNS, lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(folder / TRIALS_FILE, buffer.getvalue())
    settings = atomic.read_json(folder / SEARCH_FILE, {}) or {}
    best = best_row(rows, (settings.get("data") or {}).get("val_images"), settings.get("default"))
    if best is not None:
        write_strict_json(folder / BEST_FILE, best)
    plot_search(rows, best, folder / SEARCH_PLOT)
    return rows


def write_strict_json(path, value):
    """Writes `value` as JSON atomically, refusing NaN and infinity
    (`ValueError`): every JSON file a search writes parses anywhere."""
    atomic.write_text(
        path, json.dumps(value, indent=2, sort_keys=True, allow_nan=False, default=str) + "\n"
    )


def load_trials(folder):
    """Reads a search's `trials.csv` into a list of dicts (numbers parsed)."""
    with open(Path(folder) / TRIALS_FILE, newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        for key, value in row.items():
            if key in ("trial_id", "status", "method"):
                continue
            row[key] = float(value) if value not in ("", None) else None
    return rows


def load_best(folder):
    """Reads a search's `best.json`.

    Raises:
        SearchError: the folder holds no `best.json` (no search, or no
            completed trial yet).
    """
    best = atomic.read_json(Path(folder) / BEST_FILE)
    if best is None:
        raise SearchError(
            f"'{folder}' holds no {BEST_FILE}: run the search first (or let one trial complete)"
        )
    return best


def _log_ticks(low, high):
    # Round values for a log axis; None when fewer than two fall in range.
    ticks = [v for v in (0.5, 1, 2, 3, 5, 10, 20, 30, 50, 100) if low <= v <= high]
    return ticks if len(ticks) >= 2 else None


def plot_search(rows, best, path):
    """Scatter plots of val accuracy over T (log scale) and over alpha.

    Each point is a completed trial, coloured by the other knob; the best
    trial is marked with a red star.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    done = [r for r in rows if r["val_accuracy"] is not None]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    if done:
        temps = np.array([r["temperature"] for r in done])
        alphas = np.array([r["alpha"] for r in done])
        scores = 100 * np.array([r["val_accuracy"] for r in done])
        # Each panel colours the points by the other knob.
        t_norm = (
            matplotlib.colors.LogNorm(temps.min(), temps.max())
            if temps.min() < temps.max()
            else None
        )
        panels = (
            (axes[0], temps, alphas, None, "alpha", "viridis", "temperature T (log scale)"),
            (
                axes[1],
                alphas,
                temps,
                t_norm,
                "T",
                "plasma",
                "alpha (weight of the hard-label loss)",
            ),
        )
        for axis, x, colour, norm, colour_label, cmap, xlabel in panels:
            points = axis.scatter(
                x, scores, c=colour, cmap=cmap, norm=norm, s=40, edgecolors="black", linewidths=0.4
            )
            bar = figure.colorbar(points, ax=axis, label=colour_label)
            if norm is not None:
                bar.set_ticks(_log_ticks(colour.min(), colour.max()) or bar.get_ticks())
            bar.ax.yaxis.set_major_formatter(plain)
            bar.ax.yaxis.set_minor_formatter(NullFormatter())
            axis.set_xlabel(xlabel)
            axis.set_ylabel("best val accuracy (%)")
            axis.grid(alpha=0.3)
        axes[0].set_xscale("log")
        low, high = temps.min() / 1.5, temps.max() * 1.5
        axes[0].set_xlim(low, high)
        axes[0].set_xticks(_log_ticks(low, high) or sorted({float(f"{t:.3g}") for t in temps})[:8])
        axes[0].xaxis.set_major_formatter(plain)
        axes[0].xaxis.set_minor_formatter(NullFormatter())
        if best is not None:
            _mark_best(figure, axes, best, len(done))
    else:
        for axis in axes:
            axis.text(
                0.5,
                0.5,
                "no completed trial yet",
                ha="center",
                va="center",
                transform=axis.transAxes,
            )
    with atomic.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(figure)


def _mark_best(figure, axes, best, count):
    """Stars the best trial in both panels and titles the figure with it."""
    for axis, x in ((axes[0], best["temperature"]), (axes[1], best["alpha"])):
        axis.scatter(
            [x],
            [100 * best["score"]],
            marker="*",
            s=300,
            color="red",
            edgecolors="black",
            zorder=5,
            label="best",
        )
        axis.legend(loc="best", fontsize=8)
    figure.suptitle(
        f"{count} trials; best: T = {best['temperature']:.3g}, "
        f"alpha = {best['alpha']:.3g}, val accuracy {100 * best['score']:.2f}% "
        f"(trial {best['trial_id']})"
    )
