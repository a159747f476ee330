"""What trained a cell, read from its own logs, and what its name or label claims.

A label (folder name, ``--label``, ``cell.json``) is a claim; the logs are evidence. The keys a
trainer logs, and the scale of its rewards, tell the objectives apart:

- DPO (and IPO) rewards are β·(policy − reference) log-ratios: exactly 0 before the first update,
  and free to be positive. IPO's squared loss starts at (1/2β)², DPO's sigmoid loss at ln 2.
- SimPO / CPO rewards are β·mean log-probability: below 0 on every row, and a fixed multiple (β)
  of the logged mean log-probability. TRL's CPO also logs ``nll_loss``.
- ORPO logs ``log_odds_ratio`` / ``log_odds_chosen`` (TRL) or ``odds_ratio_loss`` and
  ``sft_loss`` (LLaMA-Factory); its rewards look like SimPO's, so its own keys decide first.
- KTO logs ``kl`` with per-class sums or no margins; GRPO and PPO log rewards of generations,
  SFT a token accuracy: these train without preference pairs ("no preference metrics").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from prefwatch.core import metrics as m
from prefwatch.core.series import CellSeries, median

PREFERENCE = frozenset({"dpo", "simpo", "orpo", "kto", "ipo"})
NO_PREFERENCE = frozenset({"grpo", "ppo", "sft"})
# Words in folder names and labels, and the objective each means (CPO's loss with loss_type
# "simpo" is SimPO: one objective, two names).
TOKENS = {
    "dpo": "dpo",
    "simpo": "simpo",
    "cpo": "simpo",
    "orpo": "orpo",
    "kto": "kto",
    "ipo": "ipo",
    "grpo": "grpo",
    "ppo": "ppo",
    "sft": "sft",
}
NAMES = {
    "dpo": "DPO",
    "simpo": "SimPO/CPO",
    "orpo": "ORPO",
    "kto": "KTO",
    "ipo": "IPO",
    "grpo": "GRPO",
    "ppo": "PPO",
    "sft": "SFT",
}

# Rewards this close to 0 on the first logged row are "before any update".
ZERO_REWARD = 1e-6
# rewards / log-probability constant within this relative spread means rewards = β·log-probability.
RATIO_SPREAD = 0.01
# A first loss above this at zero rewards is not DPO's ln 2 (0.693) nor a hinge's 1.0.
IPO_FIRST_LOSS = 1.5


@dataclass(frozen=True)
class Inference:
    """What the logs say trained the cell. ``objective`` is None when they cannot tell;
    ``preference`` is False for logs without preference metrics, None when nothing is logged yet."""

    objective: str | None
    preference: bool | None
    evidence: str

    @property
    def words(self) -> str:
        """The objective as a reader says it ("DPO", "no preference metrics", "unknown")."""
        if self.objective is not None:
            suffix = "" if self.preference else ": no preference metrics"
            return NAMES.get(self.objective, self.objective) + suffix
        return "no preference metrics" if self.preference is False else "unknown"


@dataclass(frozen=True)
class Claim:
    """What a cell is said to be, and by whom ("--label", "cell.json", "folder name",
    "adapter_config.json"); ``note`` says why a name gave nothing (two objective words)."""

    objective: str | None = None
    objective_source: str | None = None
    rank: int | None = None
    rank_source: str | None = None
    note: str | None = None


NOTHING_YET = Inference(None, None, "no train rows yet")


def name_objective(name: str) -> tuple[str | None, str | None]:
    """The objective a folder name states, or (None, why) when it names two: a data set called
    ``dpo-mix`` trained with SimPO is not a DPO run.

    >>> name_objective("argilla_dpo_mix_simpo_kl")
    (None, 'the name holds both dpo and simpo')
    >>> name_objective("simpo-r8-seed1")
    ('simpo', None)
    """
    tokens = [t.lower() for t in re.split(r"[^A-Za-z0-9]+", name) if t]
    found = list(dict.fromkeys(TOKENS[t] for t in tokens if t in TOKENS))
    if len(found) > 1:
        return None, f"the name holds both {' and '.join(found)}"
    return (found[0] if found else None), None


def infer(series: CellSeries) -> Inference:
    """The objective a cell's logs show, with the evidence in words."""
    train = series.train
    names = set(train.names) | set(series.eval.names)
    keyed = _by_keys(names)
    if keyed is not None:
        return keyed
    if not len(train):
        if series.finished:
            return Inference(None, False, "no train rows: only the end-of-training summary was logged")
        return NOTHING_YET
    chosen = train.column(m.CHOSEN)
    if np.isfinite(chosen).any():
        return _by_rewards(series)
    if "mean_token_accuracy" in names:
        return Inference("sft", False, "mean_token_accuracy without rewards: TRL's SFT trainer")
    logged = ", ".join(sorted(n for n in train.names if n != "epoch")[:4])
    return Inference(None, False, f"only {logged} logged: no preference metrics")


def _by_keys(names: set[str]) -> Inference | None:
    """Objectives that name themselves through keys no other trainer logs."""
    if names & {"log_odds_ratio", "log_odds_chosen"}:
        return Inference("orpo", True, "log_odds_ratio is logged: TRL's ORPO")
    if names & {"odds_ratio_loss"}:
        return Inference("orpo", True, "odds_ratio_loss and sft_loss are logged: LLaMA-Factory's ORPO")
    if "kl" in names and (names & {"rewards/chosen_sum", "logps/chosen_sum", "count/chosen"}):
        return Inference("kto", True, "kl with per-class reward sums: TRL's KTO")
    if names & {"objective/rlhf_reward", "objective/scores", "env/reward_mean", "ppo/loss/total"}:
        return Inference("ppo", False, "objective/rlhf_reward or scores of generations: PPO")
    if {"reward", "reward_std"} <= names or names & {"frac_reward_zero_std", "completions/mean_length"}:
        return Inference("grpo", False, "reward and reward_std of sampled completions: GRPO")
    if "kl" in names and m.CHOSEN in names and m.MARGINS not in names:
        return Inference("kto", True, "kl with rewards but no margins: TRL's KTO")
    return None


def _by_rewards(series: CellSeries) -> Inference:
    train = series.train
    chosen, rejected, steps = train.column(m.CHOSEN), train.column(m.REJECTED), train.steps
    rows = np.flatnonzero(np.isfinite(chosen))
    first = int(rows[0])
    if abs(chosen[first]) <= ZERO_REWARD and not abs(rejected[first]) > ZERO_REWARD:
        loss = float(train.column(m.LOSS)[first])
        if np.isfinite(loss) and loss > IPO_FIRST_LOSS:
            return Inference(
                "ipo",
                True,
                f"rewards are 0 at step {int(steps[first])} with loss {loss:.3g}: "
                "IPO's squared loss (1/2β)², not DPO's ln 2",
            )
        return Inference(
            "dpo",
            True,
            f"rewards/chosen and rewards/rejected are 0 at step {int(steps[first])}: "
            "β·(policy − reference) log-ratios before the first update",
        )
    positive = rows[chosen[rows] > 0]
    if len(positive):
        return Inference(
            "dpo",
            True,
            f"rewards/chosen is positive ({chosen[positive[0]]:.3g}) at step {int(steps[positive[0]])}: "
            "a reference-relative reward (a mean log-probability never is)",
        )
    for logps in ("avg_logps/chosen", m.LOGPS_CHOSEN):
        beta = _constant_ratio(chosen, train.column(logps))
        if beta is not None:
            nll = " and nll_loss is logged" if "nll_loss" in train.names else ""
            return Inference(
                "simpo",
                True,
                f"rewards/chosen = {beta:.3g} × {logps} on every row{nll}: β·mean log-probability, "
                "the reference-free reward of SimPO/CPO",
            )
    if "nll_loss" in train.names:
        return Inference("simpo", True, "rewards below 0 from the first row, with nll_loss: TRL's CPO")
    return Inference(
        None,
        True,
        "rewards are neither 0 at the first row nor a multiple of the log-probabilities: DPO and SimPO "
        "cannot be told apart from these logs",
    )


def _constant_ratio(rewards: np.ndarray, logps: np.ndarray) -> float | None:
    """β when rewards = β·logps on every row where both are logged (at least two rows)."""
    both = np.isfinite(rewards) & np.isfinite(logps) & (logps != 0)
    if both.sum() < 2:
        return None
    ratio = rewards[both] / logps[both]
    centre = median(ratio)
    if centre <= 0 or np.max(np.abs(ratio - centre)) > RATIO_SPREAD * centre:
        return None
    return centre


def said_by(source: str | None) -> str:
    """A claim's source as the subject of a sentence: "the folder name", "cell.json", "--label"."""
    return "the folder name" if source in (None, "folder name") else source


def mismatch(claim: Claim, inference: Inference) -> str | None:
    """Why the claimed objective and the logs disagree, or None when they agree or the logs cannot tell."""
    if claim.objective is None or inference.objective is None or claim.objective == inference.objective:
        return None
    return (
        f"{said_by(claim.objective_source)} says {claim.objective} but the logs are "
        f"{inference.words}: {inference.evidence}"
    )
