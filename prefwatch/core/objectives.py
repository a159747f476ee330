"""What trained a cell, read from its own logs, and what its name or label claims.

A label (folder name, ``--label``, ``cell.json``) is a claim; the logs are evidence. What each trainer
logs is catalogued, from the trainers' own code, in ``prefwatch.core.signatures``; the keys and the
scale of the rewards tell the objectives apart:

- ORPO logs ``log_odds_ratio`` / ``log_odds_chosen`` (TRL) or ``odds_ratio_loss`` and ``sft_loss``
  (LLaMA-Factory); its rewards look like SimPO's, so its own keys decide first.
- KTO logs ``kl`` beside its rewards (every TRL era: 0.8.0's bare keys, 0.8.2-0.8.6's ``train/``
  prefixes, then logits, then entropy); no other preference trainer logs ``kl``, and KTO never logs
  ``rewards/accuracies``. BCO logs ``delta``, the running mean of its rewards.
- Online DPO logs DPO's rewards beside PPO's ``objective/*``; PPO, RLOO and GRPO log scores of sampled
  completions and no ``rewards/chosen``, SFT a token accuracy: these train without preference pairs.
- DPO (and its loss types: IPO, hinge, ...) rewards are β·(policy − reference) log-ratios: exactly 0
  before the first update, and free to be positive. With the rewards at 0 the first loss names the
  loss type: ln 2 for sigmoid, 1 for hinge or APO, 2 ln 2 for NCA or BCO pairs, (1/2β)² for IPO.
- SimPO / CPO rewards are β·log-probability (mean per token for SimPO): below 0 on every row, and a
  fixed multiple (β) of the logged log-probability.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from prefwatch.core import metrics as m
from prefwatch.core.series import CellSeries, median
from prefwatch.core.signatures import SIGNATURES, Reward, Signature, first_loss

PREFERENCE = frozenset({"dpo", "simpo", "orpo", "kto", "ipo", "bco", "online_dpo"})
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
    "bco": "bco",
    "grpo": "grpo",
    "ppo": "ppo",
    "rloo": "grpo",
    "sft": "sft",
}
NAMES = {
    "dpo": "DPO",
    "simpo": "SimPO/CPO",
    "orpo": "ORPO",
    "kto": "KTO",
    "ipo": "IPO",
    "bco": "BCO",
    "online_dpo": "Online DPO",
    "grpo": "GRPO",
    "ppo": "PPO",
    "sft": "SFT",
}

# Rewards this close to 0 on the first logged row are "before any update".
ZERO_REWARD = 1e-6
# rewards / log-probability constant within this relative spread means rewards = β·log-probability.
RATIO_SPREAD = 0.01
# A first loss above this at zero rewards is not DPO's ln 2 (0.693), a hinge's 1.0 nor NCA's 2 ln 2
# (1.386): a squared loss, IPO's (1/2β)² (or SPPO-hard's ½/β²).
IPO_FIRST_LOSS = 1.5
# A first loss within this of a loss type's value at zero rewards is that value: transformers rounds the
# logged loss to 4 decimals.
LOSS_MATCH = 0.002
# Objectives one trainer family shares: a label naming any of them is right for logs of another (IPO,
# hinge, NCA... are loss types of DPOTrainer; Online DPO is DPO on sampled pairs; CPO's simpo loss is
# SimPO; RLOO and PPO are both RL on sampled completions). A label is contradicted only across families.
FAMILY = {
    "dpo": "dpo",
    "ipo": "dpo",
    "online_dpo": "dpo",
    "simpo": "simpo",
    "orpo": "orpo",
    "kto": "kto",
    "bco": "bco",
    "grpo": "rl",
    "ppo": "rl",
    "sft": "sft",
}
# Loss types of DPOTrainer that carry another objective's name: a label saying that objective is right.
LOSS_TYPE_OBJECTIVE = {"kto_pair": "kto", "bco_pair": "bco", "ipo": "ipo"}
# DPOTrainer's loss types grouped by their loss at zero rewards (signatures.first_loss), in the order
# tried; the first names the group, the others start at the same value.
START_GROUPS = (
    ("sigmoid", "robust", "aot", "aot_pair", "aot_unpaired", "sigmoid_norm"),
    ("kto_pair",),
    ("discopop",),
    ("hinge", "apo_zero", "apo_down"),
    ("nca_pair", "bco_pair"),
)


@dataclass(frozen=True)
class Inference:
    """What the logs say trained the cell. ``objective`` is None when they cannot tell;
    ``preference`` is False for logs without preference metrics, None when nothing is logged yet."""

    objective: str | None
    preference: bool | None
    evidence: str
    trainer: str | None = None  # the catalogued trainers whose keys these are ("TRL KTOTrainer (TRL 0.9.3-0.11.4)")
    loss_type: str | None = None  # DPOTrainer's loss_type where the first loss names it ("sigmoid")
    reward: Reward | None = None  # what rewards/chosen is, where the trainer is known

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
    """The objective a cell's logs show, with the evidence in words, the catalogued trainer whose keys
    they are and, for DPOTrainer, the loss type where the first loss names it."""
    train = series.train
    names = set(train.names) | set(series.eval.names)
    keyed = _by_keys(names, series)
    if keyed is None:
        if not len(train):
            if series.finished:
                return Inference(None, False, "no train rows: only the end-of-training summary was logged")
            return NOTHING_YET
        if np.isfinite(train.column(m.CHOSEN)).any():
            keyed = _by_rewards(series)
        elif "mean_token_accuracy" in names:
            return Inference("sft", False, "mean_token_accuracy without rewards: TRL's SFT trainer")
        else:
            logged = ", ".join(sorted(n for n in train.names if n != "epoch")[:4])
            return Inference(None, False, f"only {logged} logged: no preference metrics")
    return _with_trainer(keyed, names)


def _by_keys(names: set[str], series: CellSeries) -> Inference | None:
    """Objectives that name themselves through keys no other trainer logs (see signatures.SIGNATURES)."""
    rewards = names & {m.CHOSEN, m.REJECTED, m.LOGPS_CHOSEN, m.LOGPS_REJECTED}
    if names & {"log_odds_ratio", "log_odds_chosen"}:
        return Inference("orpo", True, "log_odds_ratio is logged: TRL's ORPO")
    if names & {"odds_ratio_loss"}:
        return Inference("orpo", True, "odds_ratio_loss and sft_loss are logged: LLaMA-Factory's ORPO")
    if names & {"objective/rlhf_reward", "objective/scores", "objective/kl", "env/reward_mean", "ppo/loss/total"}:
        if m.CHOSEN in names:
            return Inference(
                "online_dpo",
                True,
                "rewards/chosen beside objective/kl and the scores of sampled pairs: TRL's Online DPO",
            )
        return Inference("ppo", False, "objective/rlhf_reward or scores of generations: PPO or RLOO")
    if {"reward", "reward_std"} <= names or names & {"frac_reward_zero_std", "completions/mean_length"}:
        return Inference("grpo", False, "reward and reward_std of sampled completions: GRPO or RLOO")
    if "kl" in names and (rewards or names & {"rewards/chosen_sum", "logps/chosen_sum", "count/chosen"}):
        if m.ACCURACIES not in names:
            at_zero = _zero_start(series)
            start = f"; rewards are 0 at step {at_zero}" if at_zero is not None else ""
            return Inference(
                "kto",
                True,
                f"kl is logged beside rewards and log-probs, without rewards/accuracies: KTO{start} "
                "(no other preference trainer logs kl)",
            )
    if "delta" in names and rewards:
        return Inference("bco", True, "delta (the running mean of the rewards) beside rewards: TRL's BCO")
    return None


def _zero_start(series: CellSeries) -> int | None:
    """The first train row's step when its logged rewards are 0 (policy = reference), else None."""
    train = series.train
    chosen, rejected = train.column(m.CHOSEN), train.column(m.REJECTED)
    logged = np.flatnonzero(np.isfinite(chosen) | np.isfinite(rejected))
    if not len(logged):
        return None
    first = int(logged[0])
    values = [v for v in (chosen[first], rejected[first]) if np.isfinite(v)]
    return int(train.steps[first]) if all(abs(v) <= ZERO_REWARD for v in values) else None


def _by_rewards(series: CellSeries) -> Inference:
    train = series.train
    chosen, steps = train.column(m.CHOSEN), train.steps
    rows = np.flatnonzero(np.isfinite(chosen))
    at_zero = _zero_start(series)
    if at_zero is not None:
        first = int(rows[0])
        return _loss_type(float(train.column(m.LOSS)[first]), at_zero, _per_token(train.column(m.LOGPS_CHOSEN)))
    positive = rows[chosen[rows] > 0]
    if len(positive):
        return Inference(
            "dpo",
            True,
            f"rewards/chosen is positive ({chosen[positive[0]]:.3g}) at step {int(steps[positive[0]])}: "
            "a reference-relative reward (a mean log-probability never is)",
            reward=Reward.LOG_RATIO,
        )
    for logps in ("avg_logps/chosen", m.LOGPS_CHOSEN):
        beta = _constant_ratio(chosen, train.column(logps))
        if beta is not None:
            nll = " and nll_loss is logged" if "nll_loss" in train.names else ""
            per_token = logps == "avg_logps/chosen" or _per_token(train.column(logps))
            reward = Reward.MEAN_LOGP if per_token else Reward.SUM_LOGP
            return Inference(
                "simpo",
                True,
                f"rewards/chosen = {beta:.3g} × {logps} on every row{nll}: β·log-probability, "
                "the reference-free reward of SimPO/CPO",
                reward=reward,
            )
    return Inference(
        None,
        True,
        "rewards are neither 0 at the first row, nor positive, nor a multiple of the log-probabilities: "
        "DPO and SimPO cannot be told apart from these logs",
    )


# A mean log-probability per token stays above this; a sum over an answer's tokens falls below it.
PER_TOKEN_FLOOR = -10.0


def _per_token(logps: np.ndarray) -> bool:
    """Whether logged log-probabilities are per-token means: their early median above PER_TOKEN_FLOOR
    (a token at e^-10 is one in 22,000; summed over tens of tokens, log-probabilities fall far below)."""
    finite = logps[np.isfinite(logps)]
    return bool(len(finite)) and median(finite[:20]) > PER_TOKEN_FLOOR


def _loss_type(loss: float, step: int, per_token: bool = False) -> Inference:
    """DPO with its loss type named by the first loss, logged while every reward was still 0. IPO's
    log-probs (and so its rewards) are per-token means in TRL 0.7-0.28, sums from 0.29."""
    zero = f"rewards are 0 at step {step}"
    if not np.isfinite(loss):
        return Inference("dpo", True, f"{zero}: β·(policy − reference) log-ratios before the first update")
    if loss > IPO_FIRST_LOSS:
        beta = 1 / (2 * np.sqrt(loss))
        return Inference(
            "ipo",
            True,
            f"{zero} with loss {loss:.4g}: IPO's squared loss (1/2β)² (β = {beta:.3g}), not DPO's ln 2 "
            f"(SPPO-hard's ½/β² starts there too, at β = {np.sqrt(0.5 / loss):.3g})",
            loss_type="ipo",
            reward=Reward.LOG_RATIO_PER_TOKEN if per_token else Reward.LOG_RATIO,
        )
    for group in START_GROUPS:
        value = first_loss(group[0])
        if value is not None and abs(loss - value) <= LOSS_MATCH:
            also = f" (or {', '.join(group[1:])}, which start there too)" if len(group) > 1 else ""
            return Inference(
                "dpo",
                True,
                f"{zero} (β·(policy − reference) log-ratios before the first update) with loss {loss:.4g}: "
                f"loss_type {group[0]}{also}",
                loss_type=group[0],
                reward=Reward.LOG_RATIO,
            )
    return Inference(
        "dpo",
        True,
        f"{zero}: β·(policy − reference) log-ratios before the first update (the first loss {loss:.4g} "
        "names no loss type: several steps averaged, or label smoothing)",
        reward=Reward.LOG_RATIO,
    )


def catalogued(names: set[str], objective: str | None = None) -> list[Signature]:
    """The catalogued trainers (of ``objective``, or any) whose every key these logs hold, the most
    specific first: only the entries explaining the most logged keys, their optional ones included (a
    1.x record holds 0.7's keys and more)."""
    full = [s for s in SIGNATURES if (objective is None or s.objective == objective) and s.keys <= names]
    explained = [len((s.keys | s.optional) & names) for s in full]
    most = max(explained, default=0)
    return [s for s, n in zip(full, explained) if n == most]


def trainer_words(signatures: list[Signature]) -> str | None:
    """ "TRL KTOTrainer 0.9.3-0.11.4 or LLaMA-Factory CustomKTOTrainer 0.8-0.9": each trainer once."""
    trainers: dict[str, list[str]] = {}
    for signature in signatures:
        versions = trainers.setdefault(signature.trainer, [])
        if signature.versions not in versions:
            versions.append(signature.versions)
    return " or ".join(f"{name} {', '.join(versions)}" for name, versions in trainers.items()) or None


def _with_trainer(inference: Inference, names: set[str]) -> Inference:
    """``inference`` with the trainers whose keys these are (of its objective where any match, else of
    any: a DPOTrainer subclass training SimPO logs DPOTrainer's keys) and, where they agree, their reward."""
    if inference.objective is None:
        return inference
    own = catalogued(names, inference.objective)
    found = own or catalogued(names)
    rewards = {s.reward for s in own}
    reward = inference.reward or (rewards.pop() if len(rewards) == 1 else None)
    return replace(inference, trainer=trainer_words(found), reward=reward)


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


def agrees(claim: Claim | None, inference: Inference) -> bool:
    """Whether the claimed objective is one the logs show: the same objective, one of its family (a
    label "dpo" on an IPO or Online DPO run), or the objective a DPOTrainer loss type carries ("kto"
    for kto_pair)."""
    said, shown = claim.objective if claim else None, inference.objective
    if said is None or shown is None:
        return False
    if said == shown or FAMILY.get(said, said) == FAMILY.get(shown, shown):
        return True
    return inference.loss_type is not None and LOSS_TYPE_OBJECTIVE.get(inference.loss_type) == said


def mismatch(claim: Claim, inference: Inference) -> str | None:
    """Why the claimed objective and the logs disagree, or None when they agree (see ``agrees``) or
    the logs cannot tell."""
    if claim.objective is None or inference.objective is None or agrees(claim, inference):
        return None
    return (
        f"{said_by(claim.objective_source)} says {claim.objective} but the logs are "
        f"{inference.words}: {inference.evidence}"
    )
