"""Findings per cell: the review of a run, and what in its curves a careful engineer would flag.

Train logs and evaluations come at different cadences and are noisy (with 100 held-out pairs an
accuracy moves by about 0.1 between evaluations), so every rule compares window means, never
single points, and train and held-out rows are split before anything is compared.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from prefwatch.core import metrics as m
from prefwatch.core.objectives import Claim, Inference, infer, mismatch
from prefwatch.core.series import CellSeries, SplitSeries, median, row_medians
from prefwatch.core.signatures import Reward

# ---- Thresholds. Each is a named constant, and each can be overridden through Thresholds. ----


@dataclass(frozen=True)
class Thresholds:
    # Share of train rows in the "late" window: the last quarter is what the run ended on, and long
    # enough (25 rows of a 100-step run) to average out batch noise.
    late_window: float = 0.25
    # Held-out accuracy is smoothed over this many evaluations before looking for its peak.
    eval_smoothing: int = 3
    # Over-optimisation needs the held-out peak at least this many evaluations before the end...
    min_evals_after_peak: int = 3
    # ...and the train margin after the peak to exceed the margin at the peak by this fraction of
    # the margin's own scale: rewards of different objectives live on different scales.
    margin_rise: float = 0.25
    # Likelihood displacement: the chosen log-probability falls by at least this many nats, and by
    # more than this many standard errors of the difference between the halves' means.
    logp_drop: float = 1.0
    logp_noise: float = 3.0
    # Degeneration: the chosen log-prob's late mean this many times its starting level (an order
    # of magnitude lower) is an error, not a warning.
    degeneration_factor: float = 10.0
    # Saturation: late train loss below this with every train batch ranked right.
    saturated_loss: float = 0.01
    # Reference equal to policy: this many train rows with rewards exactly zero and loss at ln 2.
    reference_rows: int = 5
    # Margin consistency: |margins - (chosen - rejected)| allowed, relative to the rewards' scale.
    margin_tolerance: float = 0.02
    # Stalled: no new line for this many times the usual interval between lines...
    stall_factor: float = 5.0
    # ...and never less than this many seconds (start-up and evaluations pause logging). The usual
    # interval is the median over the last stall_history lines: the pace a run keeps lately (a job
    # resumed on another node, evaluations added), read in constant time at any length.
    stall_min_seconds: float = 60.0
    stall_history: int = 1000
    # Brevity: chosen answers shorter than rejected ones in at least this share of pairs.
    brevity_share: float = 0.6
    # A loss spike: a train loss this many robust deviations (MAD) above the median of the previous
    # spike_window rows. Noise in a healthy run stays within ~5; divergence jumps far beyond.
    spike_deviations: float = 10.0
    spike_window: int = 20
    # ---- Likelihood displacement read from the signal that carries it (see likelihood_displacement).
    # Reference-relative rewards (DPO, KTO, BCO: β·log π/π_ref): the chosen reward below 0 on at least
    # this share of train rows...
    below_reference_share: float = 0.6
    # ...its late mean below minus this fraction of the late margin: rewards and margin share β, so the
    # bar scales with the trainer's reward scale (a chosen reward of −0.05 beside a margin of 2 is noise
    # around the reference; −0.9 beside 2.1 is the chosen answer pushed down).
    below_reference_margin: float = 0.25
    # Per-token mean log-probabilities (SimPO, CPO, ORPO): a fall of this many nats per token (e^-0.05
    # = 5 % less likely per token; a 300-token answer 15 nats less likely) beyond the halves' noise.
    mean_logp_drop: float = 0.05
    # ---- A frozen run: the weights do not move.
    # grad_norm exactly 0 on at least this many consecutive train rows (a skipped fp16 step is one row),
    # or this many rows repeating an earlier row's rewards and log-probs bit for bit (the same batch
    # through unchanged weights).
    frozen_rows: int = 5
    # Repeats are looked for among the last this many train rows (a frozen run repeats within an epoch;
    # the window bounds the work of a refresh on a run of a million rows).
    frozen_window: int = 4096
    # Length drift: the mean length of the sampled completions (late: over the last eval_smoothing
    # evaluations) this many times the reference's, or this many times shorter. The mean of 8 greedy
    # answers moves by ~15 % between evaluations (their lengths' sd is ~40 % of the mean, / sqrt 8), and
    # Park et al. (2024) see DPO's length grow about 2x past the data's bias: a doubling or halving
    # is what learning length looks like, not noise.
    length_factor: float = 2.0
    # ...while the cell wins held-out pairs: late held-out accuracy at least this (chance is 0.5, and
    # 100 pairs move accuracy by ~0.1): the rewards say it learned, the completions say what.
    length_win_accuracy: float = 0.6
    # Degeneration: the late answers' distinct-2 (unique word bigrams / all) below this share of the
    # reference's, with the length drifted down: the answers collapsed to near-identical short ones.
    collapse_distinct: float = 0.5


DEFAULT = Thresholds()


class Severity(enum.StrEnum):
    """How much a finding weighs: ``info`` is said, ``warn`` colours the cell, ``error`` makes the run unhealthy."""

    INFO = "info"
    WARN = "warn"
    ERROR = "error"


INFO, WARN, ERROR = Severity.INFO, Severity.WARN, Severity.ERROR


class FindingKind(enum.StrEnum):
    """What a finding is about; one rule (a function below, or the machine's warnings) makes each."""

    NON_FINITE = "non_finite"
    INTERMITTENT_NON_FINITE = "intermittent_non_finite"
    GRAD_SCALER_SKIPS = "grad_scaler_skips"
    OBJECTIVE_MISMATCH = "objective_mismatch"
    REFERENCE_EQUALS_POLICY = "reference_equals_policy"
    OVEROPTIMIZATION = "overoptimization"
    LIKELIHOOD_DISPLACEMENT = "likelihood_displacement"
    SATURATION = "saturation"
    MARGIN_INCONSISTENT = "margin_inconsistent"
    BREVITY_BIAS = "brevity_bias"
    STALLED = "stalled"
    GPU_MEMORY = "gpu_memory"
    GPU_IDLE = "gpu_idle"
    FROZEN = "frozen"
    LENGTH_DRIFT = "length_drift"


# Findings about the data (brevity) and the machine (a GPU full or idle: prefwatch.files.system), not the run's health.
NOT_RUN_HEALTH = frozenset({FindingKind.BREVITY_BIAS, FindingKind.GPU_MEMORY, FindingKind.GPU_IDLE})
HEALTH_KINDS = frozenset(
    {
        FindingKind.FROZEN,
        FindingKind.NON_FINITE,
        FindingKind.INTERMITTENT_NON_FINITE,
        FindingKind.REFERENCE_EQUALS_POLICY,
        FindingKind.LIKELIHOOD_DISPLACEMENT,
        FindingKind.SATURATION,
        FindingKind.MARGIN_INCONSISTENT,
    }
)


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    severity: Severity
    message: str
    step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Review:
    """The founding write-up's review of a run, computed from split, windowed series."""

    train_margin_early: float | None = None
    train_margin_late: float | None = None
    late_chosen: float | None = None
    late_rejected: float | None = None
    heldout_margin: float | None = None
    heldout_accuracy: float | None = None
    heldout_pairs_won: int | None = None
    heldout_pairs: int | None = None
    heldout_pairs_source: str | None = None  # "per-pair", "data.json", "given", "estimated"
    peak_heldout_accuracy: float | None = None
    peak_heldout_step: int | None = None
    evaluations: int = 0
    loss_spikes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in asdict(self).items()}


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Diagnosis:
    review: Review
    findings: list[Finding] = field(default_factory=list)

    @property
    def worst(self) -> str | None:
        order = {INFO: 0, WARN: 1, ERROR: 2}
        return max((f.severity for f in self.findings), key=order.__getitem__, default=None)

    def has(self, *kinds: str) -> bool:
        return any(f.kind in kinds for f in self.findings)

    @property
    def clean(self) -> bool:
        """No over-optimisation and no health finding above info (the data's and the machine's are not the run's)."""
        return not any(f.severity != INFO for f in self.findings if f.kind not in NOT_RUN_HEALTH)


# ---- Windows -----------------------------------------------------------------------------------


def window_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    # The sum over the count, as ndarray.mean computes it (bit for bit), without its wrapper's cost:
    # a thousand-cell report takes some 13,000 of these.
    return float(np.add.reduce(finite) / len(finite)) if len(finite) else None


def nanargmax(values: np.ndarray) -> int:
    """``np.nanargmax`` (the first largest value, NaN left out) for an array holding a number, without
    its wrapper's cost; raises ValueError on an all-NaN array as it does."""
    nan = np.isnan(values)
    if nan.all():
        raise ValueError("All-NaN slice encountered")
    return int(np.argmax(np.where(nan, -np.inf, values)))


def late(values: np.ndarray, share: float) -> np.ndarray:
    n = len(values)
    return values[n - max(1, int(round(n * share))) :] if n else values


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centered moving mean that ignores NaN; the ends use the points available."""
    if len(values) == 0 or window <= 1:
        return values.astype(float)
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    kernel = np.ones(window)
    sums = np.convolve(filled, kernel, mode="same")
    counts = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# ---- The review ----------------------------------------------------------------------------------


def heldout_accuracy_series(series: CellSeries, pairs: Any | None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, accuracy) per evaluation: from per-pair results where they exist, else TRL's average."""
    if pairs is not None and pairs.steps:
        steps = np.asarray(pairs.steps, dtype=float)
        accuracy = np.array([np.mean(c > r) for c, r in zip(pairs.chosen, pairs.rejected)])
        return steps, accuracy
    return series.eval.steps, series.eval.column(m.ACCURACIES)


def heldout_margin_series(series: CellSeries, pairs: Any | None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, margin) per evaluation: from per-pair results where they exist, else TRL's average.

    Both are the mean over held-out pairs of chosen minus rejected reward; per-pair results are exact
    where TRL averages per batch."""
    if pairs is not None and pairs.steps:
        steps = np.asarray(pairs.steps, dtype=float)
        return steps, np.array([np.mean(c - r) for c, r in zip(pairs.chosen, pairs.rejected)])
    return series.eval.steps, series.eval.column(m.MARGINS)


def review(
    series: CellSeries,
    pairs: Any | None = None,
    heldout_pairs: int | None = None,
    data_stats: dict[str, Any] | None = None,
    t: Thresholds = DEFAULT,
) -> Review:
    train, evals = series.train, series.eval
    margins = train.column(m.MARGINS)
    half = len(margins) // 2
    steps, accuracy = heldout_accuracy_series(series, pairs)
    won, total, source = _pairs_won(pairs, accuracy, heldout_pairs, data_stats, evals)
    peak_accuracy, peak_step = _peak(steps, accuracy, t)
    heldout_margin = _last_finite(heldout_margin_series(series, pairs)[1])
    return Review(
        train_margin_early=window_mean(margins[:half]) if half else None,
        train_margin_late=window_mean(margins[half:]) if half else window_mean(margins),
        late_chosen=window_mean(late(train.column(m.CHOSEN), t.late_window)),
        late_rejected=window_mean(late(train.column(m.REJECTED), t.late_window)),
        heldout_margin=heldout_margin,
        heldout_accuracy=_last_finite(accuracy),
        heldout_pairs_won=won,
        heldout_pairs=total,
        heldout_pairs_source=source,
        peak_heldout_accuracy=peak_accuracy,
        peak_heldout_step=peak_step,
        evaluations=len(steps),
        loss_spikes=train.fold(_spike_rows, NO_SPIKES, t).found,
    )


def _last_finite(values: np.ndarray) -> float | None:
    """The last finite value: the tail first (a long series is rarely NaN at its end), then the
    whole series in one numpy pass (a column never logged is all NaN: no Python loop over it)."""
    for part in (values[-64:], values):
        finite = np.flatnonzero(np.isfinite(part))
        if len(finite):
            return float(part[finite[-1]])
    return None


def peak_index(accuracy: np.ndarray, t: Thresholds) -> int | None:
    """Where held-out accuracy peaked: the best smoothed window (one lucky evaluation is not a peak),
    then the best evaluation inside that window."""
    smoothed = smooth(accuracy, t.eval_smoothing)
    if not np.isfinite(smoothed).any():
        return None
    centre = nanargmax(smoothed)
    half = t.eval_smoothing // 2
    start = max(0, centre - half)
    window = accuracy[start : centre + half + 1]
    return start + nanargmax(window) if np.isfinite(window).any() else centre


def _peak(steps: np.ndarray, accuracy: np.ndarray, t: Thresholds) -> tuple[float | None, int | None]:
    index = peak_index(accuracy, t)
    if index is None:
        return None, None
    return float(accuracy[index]), int(steps[index])


def _pairs_won(
    pairs: Any | None,
    accuracy: np.ndarray,
    given: int | None,
    data_stats: dict[str, Any] | None,
    evals: SplitSeries,
) -> tuple[int | None, int | None, str | None]:
    if pairs is not None and pairs.steps:
        wins = pairs.wins()
        return int(wins.sum()), len(wins), "per-pair"
    last = _last_finite(accuracy)
    total, source = given, "given"
    if total is None and data_stats and isinstance(data_stats.get("heldout_pairs"), int):
        total, source = data_stats["heldout_pairs"], "data.json"
    if total is None:
        runtime = _last_finite(evals.column("runtime"))
        rate = _last_finite(evals.column("samples_per_second"))
        if runtime and rate:
            total, source = int(round(runtime * rate)), "estimated"
    if last is None or total is None:
        return None, total, source if total is not None else None
    return int(round(last * total)), total, source


def count_loss_spikes(loss: np.ndarray, t: Thresholds = DEFAULT) -> int:
    """Train-loss rows far above the median of the block of rows before theirs (robust to the loss's
    own noise). Blocks rather than a sliding window keep this linear: a million rows take milliseconds."""
    return _spikes(NO_SPIKES, loss, t).found


class Spikes(NamedTuple):
    """Loss spikes counted so far: the finite losses not yet in a whole block, the limit the block
    before them set (None before the first), and the spikes found."""

    pending: np.ndarray
    limit: float | None
    found: int


NO_SPIKES = Spikes(np.empty(0), None, 0)


def _spikes(state: Spikes, loss: np.ndarray, t: Thresholds) -> Spikes:
    """``state`` carried over more loss rows: each whole block of ``spike_window`` finite losses is
    compared with the limit of the block before it (its median plus ``spike_deviations`` MADs)."""
    finite = loss[np.isfinite(loss)]
    values = np.concatenate((state.pending, finite)) if len(state.pending) else finite
    window = t.spike_window
    blocks = len(values) // window
    if blocks == 0:
        return Spikes(values, state.limit, state.found)
    grouped = values[: blocks * window].reshape(blocks, window)
    median = row_medians(grouped)
    mad = row_medians(np.abs(grouped - median[:, None]))
    scale = np.maximum(mad * 1.4826, 1e-3 * np.maximum(np.abs(median), 1e-6))
    limits = median + t.spike_deviations * scale
    found = state.found + int(np.sum(grouped[1:] > limits[:-1, None]))
    if state.limit is not None:
        found += int(np.sum(grouped[0] > state.limit))
    return Spikes(values[blocks * window :].copy(), float(limits[-1]), found)


def _spike_rows(state: Spikes, split: SplitSeries, start: int, stop: int, t: Thresholds) -> Spikes:
    return _spikes(state, split.column(m.LOSS)[start:stop], t)


# ---- Findings --------------------------------------------------------------------------------


def diagnose(
    series: CellSeries,
    pairs: Any | None = None,
    data_stats: dict[str, Any] | None = None,
    objective: str | None = None,
    heldout_pairs: int | None = None,
    now: float | None = None,
    alive: bool = False,
    t: Thresholds = DEFAULT,
    claim: Claim | None = None,
    inference: Inference | None = None,
    completions: Any | None = None,
) -> Diagnosis:
    summary = review(series, pairs, heldout_pairs, data_stats, t)
    findings = [
        f
        for f in (
            objective_mismatch(claim, inference),
            *non_finite(series),
            reference_equals_policy(series, t),
            overoptimization(series, pairs, t),
            likelihood_displacement(series, t, inference),
            frozen(series, t),
            saturation(series, t),
            margin_inconsistent(series, t, inference),
            brevity_bias(data_stats, objective, t),
            length_drift(completions, series, pairs, data_stats, t),
            stalled(series, now, alive, t),
        )
        if f is not None
    ]
    return Diagnosis(summary, findings)


WATCHED = (m.LOSS, m.CHOSEN, m.REJECTED, m.MARGINS, m.GRAD_NORM)
# Listed steps in a message stop after this many ("… 40 in all").
LISTED_STEPS = 8


def non_finite(series: CellSeries) -> list[Finding]:
    """NaN or infinite values, told apart by what they mean:

    - diverged (error): a value non-finite on its last rows and since some step, to the end;
    - grad-scaler skips (info): ``grad_norm`` NaN on rows whose loss is finite and after which
      the learning rate did not move: mixed precision skipped those updates, as it is built to;
    - intermittent (warn): non-finite on some rows, finite again after.
    """
    found: dict[FindingKind, list[str]] = {}
    first: dict[FindingKind, int] = {}
    for (split_name, name), since in sorted(series.first_non_finite.items(), key=lambda kv: kv[1]):
        if name not in WATCHED:
            continue
        split = series.split(split_name)
        kind, text, step = _classify(split, name, since)
        where = "held-out " if split_name == "eval" else ""
        found.setdefault(kind, []).append(where + text)
        first.setdefault(kind, step)
    severity = {
        FindingKind.NON_FINITE: ERROR,
        FindingKind.INTERMITTENT_NON_FINITE: WARN,
        FindingKind.GRAD_SCALER_SKIPS: INFO,
    }
    return [Finding(kind, severity[kind], "; ".join(texts), first[kind]) for kind, texts in found.items()]


def _classify(split: SplitSeries, name: str, since: float) -> tuple[FindingKind, str, int]:
    """(kind, text, first step) for one metric's non-finite rows. A row counts when it logged
    anything: a column cannot tell a logged NaN from a key the row did not carry."""
    steps, column = split.steps, split.column(name)
    present = np.isinf(column)
    for other in split.names:
        present |= np.isfinite(split.column(other))
    rows = np.flatnonzero(present & (steps >= since))
    bad = rows[~np.isfinite(column[rows])]
    if not len(bad):  # only the reader saw it (a row cut away later): report the step it noted
        bad = np.flatnonzero(steps >= since)[:1] if (steps >= since).any() else np.array([len(steps) - 1])
    good = np.flatnonzero(np.isfinite(column))
    tail = bad[bad > good[-1]] if len(good) else bad
    bad_steps = [int(s) for s in steps[bad]] if len(steps) else [int(since)]
    if len(tail) >= 2 or len(tail) and name != m.GRAD_NORM:  # a loss or reward non-finite on the last row
        start = int(steps[tail[0]])
        before = good[good < tail[0]]
        last = f"last finite step {int(steps[before[-1]])}" if len(before) else "never finite before"
        return FindingKind.NON_FINITE, f"{name} is NaN or infinite from step {start} to the end ({last})", start
    listed = _steps_text(bad_steps)
    plural = "s" if len(bad_steps) > 1 else ""
    if name == m.GRAD_NORM and _scaler_skips(split, bad):
        return (
            FindingKind.GRAD_SCALER_SKIPS,
            f"grad_norm is NaN at step{plural} {listed} with a finite loss and the learning rate held: "
            "the mixed-precision grad scaler skipped those updates (normal)",
            bad_steps[0],
        )
    after = "finite again after" if len(tail) == 0 else "the last row"
    return (
        FindingKind.INTERMITTENT_NON_FINITE,
        f"{name} is NaN or infinite at step{plural} {listed} ({after})",
        bad_steps[0],
    )


def _scaler_skips(split: SplitSeries, bad: np.ndarray) -> bool:
    """Every bad row has a finite loss, and the next row's learning rate equals its own (the
    scheduler does not step when the optimizer step was skipped)."""
    loss, rate = split.column(m.LOSS), split.column(m.LEARNING_RATE)
    if not np.isfinite(loss[bad]).all():
        return False
    follow = bad[bad + 1 < len(rate)]
    return bool(np.all(rate[follow + 1] == rate[follow]) and np.isfinite(rate[follow]).all())


def _steps_text(steps: list[int]) -> str:
    shown = ", ".join(str(s) for s in steps[:LISTED_STEPS])
    return shown if len(steps) <= LISTED_STEPS else f"{shown} … ({len(steps)} in all)"


def objective_mismatch(claim: Claim | None, inference: Inference | None) -> Finding | None:
    """The label (folder name, --label, cell.json) says one objective and the logs show another."""
    why = mismatch(claim, inference) if claim is not None and inference is not None else None
    return None if why is None else Finding(FindingKind.OBJECTIVE_MISMATCH, ERROR, why, None)


def reference_equals_policy(series: CellSeries, t: Thresholds) -> Finding | None:
    train = series.train
    stuck, first = train.fold(_stuck_rows, (0, None))
    if stuck < t.reference_rows or stuck < 0.5 * len(train):
        return None
    return Finding(
        FindingKind.REFERENCE_EQUALS_POLICY,
        ERROR,
        f"rewards are exactly 0 and loss is ln 2 in {stuck} of {len(train)} train rows: "
        "the policy equals the reference (is the adapter trained, or the reference the adapted model?)",
        int(train.steps[first]),
    )


def _stuck_rows(state: tuple[int, int | None], split: SplitSeries, start: int, stop: int) -> tuple[int, int | None]:
    """(rows whose rewards are exactly 0 with loss at ln 2, the first of them) carried over rows [start, stop)."""
    chosen, rejected, loss = (split.column(name)[start:stop] for name in (m.CHOSEN, m.REJECTED, m.LOSS))
    stuck = np.flatnonzero((chosen == 0) & (rejected == 0) & (np.abs(loss - math.log(2)) < 1e-3))
    count, first = state
    return count + len(stuck), first if first is not None or not len(stuck) else start + int(stuck[0])


def overoptimization(series: CellSeries, pairs: Any | None, t: Thresholds) -> Finding | None:
    steps, accuracy = heldout_accuracy_series(series, pairs)
    if len(steps) < t.min_evals_after_peak + 2:
        return None
    peak = peak_index(accuracy, t)
    if peak is None or len(steps) - 1 - peak < t.min_evals_after_peak:
        return None
    peak_step = float(steps[peak])
    train = series.train
    margins = train.column(m.MARGINS)
    cut = int(np.searchsorted(train.steps, peak_step, side="right"))  # a split's steps never go down
    before, after = margins[:cut], late(margins[cut:], 0.5)
    at_peak, now = window_mean(late(before, 0.5)), window_mean(after)
    if at_peak is None or now is None:
        return None
    scale = max(abs(at_peak), abs(now), 1e-8)
    if (now - at_peak) / scale < t.margin_rise:
        return None
    recent = window_mean(accuracy[-t.eval_smoothing :])
    return Finding(
        FindingKind.OVEROPTIMIZATION,
        WARN,
        f"train margin rose {at_peak:.3g} -> {now:.3g} after step {int(peak_step)} while held-out "
        f"accuracy peaked there at {accuracy[peak]:.2f} and averages {recent:.2f} over the last "
        f"{t.eval_smoothing} evaluations",
        int(peak_step),
    )


def falls(values: np.ndarray, by: float, noise: float) -> tuple[float, float] | None:
    """(early mean, late mean) when the second half's mean lies below the first half's by more than
    ``by`` and more than ``noise`` standard errors of the difference; else None. Per-batch log-probs
    of summed tokens swing by tens of nats, so a fixed drop alone would fire on noise."""
    finite = values[np.isfinite(values)]
    half = len(finite) // 2
    if half < 4:
        return None
    early, late_ = finite[:half], finite[half:]
    drop = early.mean() - late_.mean()
    error = math.sqrt(early.var(ddof=1) / len(early) + late_.var(ddof=1) / len(late_))
    return (float(early.mean()), float(late_.mean())) if drop > max(by, noise * error) else None


def likelihood_displacement(series: CellSeries, t: Thresholds, inference: Inference | None = None) -> Finding | None:
    """The chosen answers losing probability while the margin rises, read from the signal that carries it:

    - degeneration (error): the chosen log-prob an order of magnitude below where it started, whatever
      the margin does (summed log-probs of different batches never move tenfold by chance);
    - reference-relative rewards (DPO, KTO, BCO, Online DPO): ``rewards/chosen`` = β·log π/π_ref below 0
      and falling while the margin rises (raw summed log-probs of different batches swing by tens of
      nats: they cannot show a fall of a few);
    - per-token mean log-probs (SimPO, CPO, ORPO): falling per token while the margin rises;
    - summed log-probs only within the same examples: held-out rows, evaluation after evaluation.
    """
    train = series.train
    degenerate = degeneration(train.column(m.LOGPS_CHOSEN), t)
    if degenerate is not None:
        start, end, row = degenerate
        return Finding(
            FindingKind.LIKELIHOOD_DISPLACEMENT,
            ERROR,
            f"degeneration: chosen log-prob fell from {start:.3g} at the start to {end:.3g} late in the run "
            f"({end / start:.0f}× lower): the model no longer gives the chosen answers their probability",
            int(train.steps[row]),
        )
    reward = (inference if inference is not None else infer(series)).reward
    if reward in (Reward.LOG_RATIO, Reward.LOG_RATIO_PER_TOKEN):
        found = _below_reference(train, t)
    elif reward is Reward.MEAN_LOGP:
        found = _mean_logps_fall(train, t)
    else:
        found = None
    return found or _heldout_logps_fall(series, t)


def degeneration(logps: np.ndarray, t: Thresholds) -> tuple[float, float, int] | None:
    """(start, late mean, first row past the threshold) when the late mean of a log-probability is
    ``degeneration_factor`` times its starting level (the median of the first rows) or lower."""
    rows = np.flatnonzero(np.isfinite(logps))
    if len(rows) < 8:
        return None
    start = median(logps[rows[: max(3, len(rows) // 20)]])
    end = window_mean(late(logps[rows], t.late_window))
    if end is None or start >= 0 or end > t.degeneration_factor * start or end > start - t.logp_drop:
        return None
    below = rows[logps[rows] <= t.degeneration_factor * start]
    return start, end, int(below[0]) if len(below) else int(rows[-1])


def _rising_margin(split: SplitSeries) -> tuple[float, float] | None:
    """(early, late) half means of the margin when the late one is higher."""
    margins = split.column(m.MARGINS)
    margins = margins[np.isfinite(margins)]
    half = len(margins) // 2
    if half < 2:
        return None
    early, late_ = float(margins[:half].mean()), float(margins[half:].mean())
    return (early, late_) if late_ > early else None


def _below_reference(train: SplitSeries, t: Thresholds) -> Finding | None:
    """β·log π/π_ref of the chosen answers below 0 on most rows, falling, its late mean well below 0 for
    the margin's scale, while the margin rises: the chosen answers are less likely than under the
    reference model, by −reward/β nats."""
    rewards = train.column(m.CHOSEN)
    finite = rewards[np.isfinite(rewards)]
    fall = falls(rewards, 0.0, t.logp_noise)
    margin = _rising_margin(train)
    if fall is None or margin is None:
        return None
    below = int(np.sum(finite < 0))
    late_reward = window_mean(late(finite, t.late_window))
    late_margin = window_mean(late(train.column(m.MARGINS), t.late_window))
    if late_reward is None or late_margin is None or below < t.below_reference_share * len(finite):
        return None
    if late_reward > -t.below_reference_margin * abs(late_margin):
        return None
    peak = nanargmax(smooth(rewards, 5))
    return Finding(
        FindingKind.LIKELIHOOD_DISPLACEMENT,
        WARN,
        f"chosen reward (β·log-ratio to the reference) fell {fall[0]:.3g} -> {fall[1]:.3g} and is below 0 on "
        f"{below} of {len(finite)} rows (late mean {late_reward:.3g}) while the margin rose {margin[0]:.3g} -> "
        f"{margin[1]:.3g}: the chosen answers end {-late_reward:.3g}/β nats less likely than under the reference",
        int(train.steps[peak]),
    )


def _mean_logps_fall(train: SplitSeries, t: Thresholds) -> Finding | None:
    """Per-token mean log-probabilities of the chosen answers falling (by mean_logp_drop nats a token,
    beyond the halves' noise) while the margin rises."""
    name = "avg_logps/chosen" if train.has("avg_logps/chosen") else m.LOGPS_CHOSEN
    logps = train.column(name)
    chosen = falls(logps, t.mean_logp_drop, t.logp_noise)
    margin = _rising_margin(train)
    if chosen is None or margin is None:
        return None
    peak = nanargmax(smooth(logps, 5))
    return Finding(
        FindingKind.LIKELIHOOD_DISPLACEMENT,
        WARN,
        f"chosen {name} (per token) fell {chosen[0]:.3g} -> {chosen[1]:.3g} while the margin rose "
        f"{margin[0]:.3g} -> {margin[1]:.3g}: every token of the chosen answers loses probability, which may "
        "move to unwanted answers",
        int(train.steps[peak]),
    )


def _heldout_logps_fall(series: CellSeries, t: Thresholds) -> Finding | None:
    """Summed log-probabilities compared only within the same examples: the held-out set, evaluation
    after evaluation (at least three), the chosen answers' down by logp_drop nats or more while the
    held-out margin rose."""
    evals = series.eval
    logps, margins = evals.column(m.LOGPS_CHOSEN), evals.column(m.MARGINS)
    rows = np.flatnonzero(np.isfinite(logps))
    if len(rows) < 3:
        return None
    first, last = float(logps[rows[0]]), float(logps[rows[-1]])
    margin_rows = np.flatnonzero(np.isfinite(margins))
    if first - last < t.logp_drop or len(margin_rows) < 2 or margins[margin_rows[-1]] <= margins[margin_rows[0]]:
        return None
    return Finding(
        FindingKind.LIKELIHOOD_DISPLACEMENT,
        WARN,
        f"held-out chosen log-prob (the same examples at every evaluation) fell {first:.4g} -> {last:.4g} over "
        f"{len(rows)} evaluations while the held-out margin rose {margins[margin_rows[0]]:.3g} -> "
        f"{margins[margin_rows[-1]]:.3g}: the chosen answers lose probability",
        int(evals.steps[rows[-1]]),
    )


# ---- A frozen run ---------------------------------------------------------------------------------
# The rewards and log-probabilities whose exact repetition shows the same batch through unchanged weights.
FROZEN_SIGNALS = (m.CHOSEN, m.REJECTED, m.LOGPS_CHOSEN, m.LOGPS_REJECTED)


def frozen(series: CellSeries, t: Thresholds) -> Finding | None:
    """The weights do not move (an error: every further step burns the device for nothing):

    - grad_norm exactly 0 on frozen_rows consecutive train rows or more, unless the rewards and
      log-probs logged on those rows all differ (then the policy moves: the logger cannot see the
      gradients, as DeepSpeed ZeRO-3 reporting 0 does);
    - or frozen_rows rows repeating an earlier row's rewards and log-probs exactly, other rows between
      (the same batch, seen again through the same weights).
    Both read the last frozen_window train rows."""
    train = series.train
    start = max(0, len(train) - t.frozen_window)
    steps = train.steps[start:]
    signals = np.column_stack(
        [train.column(n)[start:] for n in FROZEN_SIGNALS if train.has(n)] or [np.empty((len(steps), 0))]
    )
    grad = train.column(m.GRAD_NORM)[start:]
    run_start, run_length = _longest_zero_run(grad)
    if run_length >= t.frozen_rows:
        rows = signals[run_start : run_start + run_length]
        if _repeats(rows) > 0 or not _informative(rows).any():
            first, last = int(steps[run_start]), int(steps[run_start + run_length - 1])
            return Finding(
                FindingKind.FROZEN,
                ERROR,
                f"grad_norm is exactly 0 on {run_length} consecutive rows (steps {first}-{last})"
                f"{_repeat_words(rows)}: no update reaches the weights (a frozen adapter, a learning rate of 0, "
                "or a loss that does not depend on the trained parameters)",
                first,
            )
    repeated = _repeats(signals)
    if repeated >= t.frozen_rows:
        first = int(steps[_first_repeat(signals)])
        return Finding(
            FindingKind.FROZEN,
            ERROR,
            f"{repeated} of the last {len(steps)} train rows repeat an earlier row's rewards and log-probs "
            "exactly: the same batches through unchanged weights (the policy does not move)",
            first,
        )
    return None


def _longest_zero_run(grad: np.ndarray) -> tuple[int, int]:
    """(first row, length) of the longest run of rows whose grad_norm is exactly 0."""
    zero = np.concatenate(([False], grad == 0, [False]))
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    if not len(edges):
        return 0, 0
    starts, ends = edges[::2], edges[1::2]
    longest = int(np.argmax(ends - starts))
    return int(starts[longest]), int(ends[longest] - starts[longest])


def _informative(rows: np.ndarray) -> np.ndarray:
    """Rows with at least two finite signals, not all 0 (rewards of 0 at a policy equal to its
    reference repeat without a frozen run: reference_equals_policy says that)."""
    finite = np.isfinite(rows)
    return (finite.sum(axis=1) >= 2) & np.any(finite & (rows != 0), axis=1) if rows.size else np.zeros(len(rows), bool)


def _repeat_mask(rows: np.ndarray) -> np.ndarray:
    """Which informative rows repeat an earlier row exactly (NaN compared as a value) with other values
    logged between: a batch seen again. A row equal to the one just before it is left out: a record
    logged twice, or synthetic constants, not a batch coming round again."""
    keep = np.flatnonzero(_informative(rows))
    mask = np.zeros(len(rows), bool)
    if len(keep) < 2:
        return mask
    values = np.nan_to_num(rows[keep], nan=np.inf, posinf=np.inf, neginf=-np.inf) + 0.0  # -0.0 is 0.0
    first = np.sort(values[:, 0])
    if (first[1:] != first[:-1]).all():  # no value of one column repeats: no row does (the usual case)
        return mask  # (sorted rather than np.unique, whose first call imports numpy.ma: 10-150 ms a process)
    # Each row as one opaque value of its bytes: np.unique over those is 3x faster than axis=0.
    packed = np.ascontiguousarray(values).view(np.dtype((np.void, values.itemsize * values.shape[1]))).ravel()
    _, first_index = np.unique(packed, return_index=True)
    repeated = np.ones(len(keep), bool)
    repeated[first_index] = False
    repeated[1:] &= np.any(values[1:] != values[:-1], axis=1)
    mask[keep[repeated]] = True
    return mask


def _repeats(rows: np.ndarray) -> int:
    return int(_repeat_mask(rows).sum())


def _first_repeat(rows: np.ndarray) -> int:
    return int(np.flatnonzero(_repeat_mask(rows))[0])


def _repeat_words(rows: np.ndarray) -> str:
    repeated = _repeats(rows)
    if not repeated:
        return ""
    return f", and {repeated} of those rows repeat an earlier row's rewards and log-probs exactly"


def saturation(series: CellSeries, t: Thresholds) -> Finding | None:
    train = series.train
    loss = window_mean(late(train.column(m.LOSS), t.late_window))
    accuracy = window_mean(late(train.column(m.ACCURACIES), t.late_window))
    if loss is None or accuracy is None or loss >= t.saturated_loss or accuracy < 1.0:
        return None
    start = np.flatnonzero(train.column(m.LOSS) < t.saturated_loss)
    return Finding(
        FindingKind.SATURATION,
        WARN,
        f"train loss {loss:.2g} with every train batch ranked right: nothing left to learn from these pairs",
        int(train.steps[start[0]]) if len(start) else None,
    )


def margin_inconsistent(series: CellSeries, t: Thresholds, inference: Inference | None = None) -> Finding | None:
    """Logged margins that are not chosen − rejected. Not for KTO: from TRL 1.5 its margin is averaged
    over the batches holding both classes only, its rewards over the batches holding each
    (trl/trainer/kto_trainer.py:1637-1655 @ v1.9.0), so they differ by design."""
    if inference is not None and inference.objective == "kto":
        return None
    for split_name in ("train", "eval"):
        split = series.split(split_name)  # type: ignore[arg-type]
        both, off, first = split.fold(_margin_rows, (0, 0, None), t.margin_tolerance)
        if both and off > max(1, 0.1 * both):
            where = "held-out" if split_name == "eval" else "train"
            return Finding(
                FindingKind.MARGIN_INCONSISTENT,
                WARN,
                f"{where} rewards/margins differs from chosen - rejected in {off} of "
                f"{both} rows: an aggregation bug in the logger?",
                int(split.steps[first]),
            )
    return None


def _margin_rows(
    state: tuple[int, int, int | None], split: SplitSeries, start: int, stop: int, tolerance: float
) -> tuple[int, int, int | None]:
    """(rows with chosen, rejected and margin all finite, rows among them whose margin is not
    chosen - rejected within ``tolerance`` of the rewards' scale, the first such row) over rows [start, stop)."""
    chosen, rejected, margins = (split.column(name)[start:stop] for name in (m.CHOSEN, m.REJECTED, m.MARGINS))
    both = np.isfinite(chosen) & np.isfinite(rejected) & np.isfinite(margins)
    scale = np.maximum(np.abs(chosen) + np.abs(rejected), 1e-6)
    with np.errstate(invalid="ignore"):
        off = np.flatnonzero(both & (np.abs(margins - (chosen - rejected)) / scale > tolerance))
    count, wrong, first = state
    return (
        count + int(both.sum()),
        wrong + len(off),
        first if first is not None or not len(off) else start + int(off[0]),
    )


def brevity_bias(data_stats: dict[str, Any] | None, objective: str | None, t: Thresholds) -> Finding | None:
    train = (data_stats or {}).get("train")
    if not isinstance(train, dict):
        return None
    share = train.get("chosen_shorter_share")
    if not isinstance(share, (int, float)) or share < t.brevity_share:
        return None
    chosen, rejected = train.get("mean_chosen_tokens"), train.get("mean_rejected_tokens")
    lengths = f" (mean {chosen:.0f} vs {rejected:.0f} tokens)" if chosen and rejected else ""
    remedy = (
        "SimPO's length-normalised reward is the remedy"
        if objective != "simpo"
        else "this cell's length-normalised reward already addresses it"
    )
    return Finding(
        FindingKind.BREVITY_BIAS,
        INFO,
        f"chosen answers are shorter than rejected ones in {share:.0%} of train pairs{lengths}: "
        f"a summed-log-prob reward can learn 'shorter wins'; {remedy}",
        None,
    )


def brevity_summary(data_stats: dict[str, Any] | None, t: Thresholds = DEFAULT) -> str | None:
    """The brevity check's answer, whether or not it found a bias (the report always says it)."""
    train = (data_stats or {}).get("train")
    if not isinstance(train, dict) or not isinstance(train.get("chosen_shorter_share"), (int, float)):
        return None
    share = train["chosen_shorter_share"]
    chosen, rejected = train.get("mean_chosen_tokens"), train.get("mean_rejected_tokens")
    lengths = f" (mean {chosen:.1f} vs {rejected:.1f} tokens)" if chosen and rejected else ""
    verdict = (
        "consistently shorter: brevity bias, SimPO's length-normalised reward addresses it"
        if share >= t.brevity_share
        else f"not consistently shorter (the check needs {t.brevity_share:.0%})"
    )
    return f"chosen answers are shorter than rejected ones in {share:.0%} of train pairs{lengths}: {verdict}"


def stalled(series: CellSeries, now: float | None, alive: bool, t: Thresholds) -> Finding | None:
    if not alive or now is None or series.finished:
        return None
    times = series.train.times[-t.stall_history - 1 :]
    times = times[np.isfinite(times)]
    if len(times) < 3:
        return None
    usual = median(np.diff(times))
    silence = now - float(times[-1])
    if silence < max(t.stall_factor * usual, t.stall_min_seconds):
        return None
    return Finding(
        FindingKind.STALLED,
        WARN,
        f"no new log line for {silence:.0f} s (usually every {usual:.1g} s) while the job is alive",
        series.last_step,
    )


# ---- What the model writes (completions.jsonl) ----------------------------------------------------


def length_drift(
    completions: Any | None, series: CellSeries, pairs: Any | None, data_stats: dict[str, Any] | None, t: Thresholds
) -> Finding | None:
    """The sampled completions grew or shrank ``length_factor`` times against the reference's while the
    cell wins held-out pairs: length is what it learned (a warning); shrunk to near-identical short
    answers (distinct-2 fallen below ``collapse_distinct`` of the reference's) it degenerated (an error).

    ``completions`` is an ingest CompletionLog: ``reference`` and ``evaluations`` with their stats."""
    reference = getattr(completions, "reference", None)
    evaluations = getattr(completions, "evaluations", None) or []
    if reference is None or not evaluations or not reference.stats.mean > 0:
        return None
    recent = evaluations[-t.eval_smoothing :]
    lengths = np.array([e.stats.mean for e in recent], dtype=float)
    late_length = window_mean(lengths)
    _, accuracy = heldout_accuracy_series(series, pairs)
    late_accuracy = window_mean(accuracy[-t.eval_smoothing :])
    if late_length is None or late_accuracy is None or late_accuracy < t.length_win_accuracy:
        return None
    ratio = late_length / reference.stats.mean
    if 1 / t.length_factor < ratio < t.length_factor:
        return None
    moved = "shrank" if ratio < 1 else "grew"
    first = next((e.step for e in evaluations if _drifted(e.stats.mean / reference.stats.mean, t)), recent[0].step)
    data = _answer_lengths(data_stats)
    evidence = (
        f"completions {moved} from {reference.stats.mean:.1f} tokens (the reference's) to {late_length:.1f} "
        f"({ratio:.2f}x) while held-out accuracy is {late_accuracy:.2f}{data}"
    )
    distinct_ref = reference.stats.distinct2
    distinct_late = window_mean(np.array([e.stats.distinct2 for e in recent], dtype=float))
    collapsed = (
        ratio < 1
        and distinct_late is not None
        and math.isfinite(distinct_ref)
        and distinct_late < t.collapse_distinct * distinct_ref
    )
    if collapsed:
        return Finding(
            FindingKind.LENGTH_DRIFT,
            ERROR,
            f"degeneration: {evidence}; the answers collapsed to near-identical short ones "
            f"(distinct-2 {distinct_late:.2f} vs the reference's {distinct_ref:.2f})",
            first,
        )
    return Finding(
        FindingKind.LENGTH_DRIFT,
        WARN,
        f"length learned: {evidence}; the pairs may be won by length, not by the preference",
        first,
    )


def _drifted(ratio: float, t: Thresholds) -> bool:
    return not 1 / t.length_factor < ratio < t.length_factor


def _answer_lengths(data_stats: dict[str, Any] | None) -> str:
    """ ", the data's chosen answers average 42 tokens, rejected 67" from data.json's held-out (else train) lengths."""
    for split in ("heldout", "train"):
        lengths = (data_stats or {}).get(split)
        if isinstance(lengths, dict):
            chosen, rejected = lengths.get("mean_chosen_tokens"), lengths.get("mean_rejected_tokens")
            if isinstance(chosen, (int, float)) and isinstance(rejected, (int, float)):
                return f"; the data's chosen answers average {chosen:.0f} tokens, rejected {rejected:.0f}"
    return ""
