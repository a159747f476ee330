"""What each preference trainer logs, read from the trainers' own code: a catalogue kept as data.

Every entry names the trainer, the versions it describes and the source line that writes its keys
(TRL's ``trl/trainer/*.py`` at a release tag; LLaMA-Factory and OpenRLHF at the commit named), the
keys one train record holds, what its ``rewards/*`` are and on what scale, and an example of the first
train record, built from that code. ``prefwatch.core.objectives`` reads logs against this catalogue;
``tests/test_signatures.py`` checks that every example is recognised as its own trainer.

Key names are the canonical ones (``prefwatch.core.metrics.canonical``): TRL logs train keys bare and
evaluation keys with ``eval_``; KTO of TRL 0.8.2-0.8.6 wrote ``train/`` and ``eval/`` prefixes, which
read the same. ``loss``, ``grad_norm``, ``learning_rate`` and ``epoch`` come from the Trainer itself.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class Reward(enum.Enum):
    """What a trainer's ``rewards/chosen`` and ``rewards/rejected`` are."""

    # β·(log π(y|x) − log π_ref(y|x)), the answer's tokens summed: exactly 0 before the first update,
    # free to be positive; a chosen reward below 0 means the answer is less likely than under the
    # reference, by reward/β nats.
    LOG_RATIO = "β·(policy − reference) log-ratio"
    # IPO in TRL 0.7-0.28 divides the summed log-probs by the answer's length first: the same ratio,
    # per token.
    LOG_RATIO_PER_TOKEN = "β·(policy − reference) per-token log-ratio"
    # β·mean per-token log-probability (SimPO, CPO with loss_type simpo or ipo, ORPO): below 0 on every
    # row, a fixed multiple of the logged mean log-probability.
    MEAN_LOGP = "β·mean per-token log-probability"
    # β·summed log-probability (CPO with loss_type sigmoid or hinge): below 0, tens to hundreds.
    SUM_LOGP = "β·summed log-probability"
    # Scores of sampled completions from a reward model or reward functions (PPO, RLOO, GRPO).
    SCORE = "scores of sampled completions"


# Keys every Trainer record holds whatever the trainer.
TRAINER_KEYS = frozenset({"loss", "grad_norm", "learning_rate", "epoch"})
DPO_KEYS = frozenset(
    {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
    }
)
KTO_KEYS = frozenset({"rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl"})


@dataclass(frozen=True)
class Signature:
    """One trainer (or loss type) in one span of versions, as its code logs it."""

    trainer: str  # "TRL DPOTrainer"
    objective: str  # the word prefwatch uses: dpo, ipo, kto, bco, simpo, orpo, online_dpo, ppo, rloo, grpo
    versions: str  # "0.7.0-0.10.1"
    source: str  # "trl/trainer/dpo_trainer.py:371 @ v0.7.0"
    keys: frozenset[str]  # what one train record holds besides the Trainer's own keys
    reward: Reward | None  # None: no rewards/* logged
    preference: bool  # trained on preference pairs (or desirable/undesirable answers)
    loss_types: tuple[str, ...] = ()
    optional: frozenset[str] = frozenset()  # keys logged only with some settings (rpo_alpha, MoE aux loss)
    example: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def name(self) -> str:
        loss = f" ({'/'.join(self.loss_types)})" if self.loss_types else ""
        return f"{self.trainer}{loss}, {self.versions}"


def _record(**values: float) -> Mapping[str, float]:
    """An example record: keys with '/' are written with '__' in the call."""
    return MappingProxyType({k.replace("__", "/"): v for k, v in values.items()})


LN2 = math.log(2)


def _dpo_first(loss: float, **extra: float) -> Mapping[str, float]:
    """DPOTrainer's first record with logging_steps 1: policy = reference, so every reward is 0."""
    values = {
        "loss": loss,
        "grad_norm": 3.2,
        "learning_rate": 5e-7,
        "rewards__chosen": 0.0,
        "rewards__rejected": 0.0,
        "rewards__accuracies": 0.0,
        "rewards__margins": 0.0,
        "logps__chosen": -312.5,
        "logps__rejected": -298.0,
        "logits__chosen": -1.41,
        "logits__rejected": -1.38,
        "epoch": 0.01,
    }
    return _record(**{**values, **extra})


# The loss of the first record when every reward is 0 (policy = reference), per DPOTrainer loss type:
# what tells the loss types apart. β is the trainer's beta, ε its label_smoothing.
# trl/trainer/dpo_trainer.py @ v1.9.0 (lines 1421-1530) and @ v0.12.2 (1087-1183).
def first_loss(loss_type: str, beta: float = 0.1, epsilon: float = 1e-3) -> float | None:
    """The loss at zero rewards, or None when it depends on more than β and ε (sft)."""
    values = {
        "sigmoid": LN2,  # −log σ(0)
        "robust": LN2,  # ((1−ε) ln 2 − ε ln 2)/(1 − 2ε)
        "aot": LN2,
        "aot_pair": LN2,
        "aot_unpaired": LN2,
        "sigmoid_norm": LN2,
        "hinge": 1.0,  # relu(1 − 0)
        "apo_zero": 1.0,  # (1 − σ(0)) + σ(0)
        "apo_down": 1.0,  # σ(0) + (1 − σ(0))
        "nca_pair": 2 * LN2,  # −log σ(0) − ½ log σ(0) − ½ log σ(0)
        "bco_pair": 2 * LN2,  # −log σ(0) − log σ(0), the running mean δ starts at 0
        "discopop": 0.5 * LN2 + 0.5,  # ln 2·(1 − σ(0)) + e⁰·σ(0)
        "kto_pair": 0.5,  # 1 − σ(β·(0 − 0)) on both halves (TRL 0.7-0.12)
        "ipo": 1 / (4 * beta * beta),  # (0 − 1/2β)²
        "sppo_hard": 0.5 / (beta * beta),  # (0 − ½/β)² + (0 + ½/β)²
        "exo_pair": -LN2 - 0.5 * math.log(epsilon * (1 - epsilon)),
    }
    return values.get(loss_type)


SIGNATURES: tuple[Signature, ...] = (
    # ---- TRL DPOTrainer --------------------------------------------------------------------------
    Signature(
        "TRL DPOTrainer",
        "dpo",
        "0.7.0-0.10.1",
        "trl/trainer/dpo_trainer.py:371 @ v0.7.0; :1051 @ v0.7.11",
        DPO_KEYS,
        Reward.LOG_RATIO,
        True,
        ("sigmoid", "hinge", "kto_pair"),
        example=_dpo_first(LN2),
    ),
    Signature(
        "TRL DPOTrainer",
        "ipo",
        "0.7.2-0.28.0",
        "trl/trainer/dpo_trainer.py:880 and :991 (average_log_prob for ipo) @ v0.7.11; :1301 @ v0.12.2",
        DPO_KEYS,
        Reward.LOG_RATIO_PER_TOKEN,
        True,
        ("ipo",),
        frozenset({"nll_loss", "aux_loss"}),
        example=_dpo_first(25.0, logps__chosen=-1.21, logps__rejected=-1.35),
    ),
    Signature(
        "TRL DPOTrainer",
        "dpo",
        "0.11.0-0.28.0",
        "trl/trainer/dpo_trainer.py:1459 @ v0.11.4; :1243 @ v0.13.0; :1644 @ v0.19.1",
        DPO_KEYS,
        Reward.LOG_RATIO,
        True,
        (
            "sigmoid",
            "hinge",
            "robust",
            "exo_pair",
            "bco_pair",
            "sppo_hard",
            "nca_pair",
            "aot",
            "aot_pair",
            "apo_zero",
            "apo_down",
            "discopop",
        ),
        frozenset({"nll_loss", "aux_loss"}),  # nll_loss with rpo_alpha (0.11+), aux_loss for MoE (0.13+)
        example=_dpo_first(LN2, nll_loss=1.62),
    ),
    Signature(
        "TRL DPOTrainer",
        "dpo",
        "0.29.0-1.9.0",
        "trl/trainer/dpo_trainer.py:1596-1653 @ v1.9.0 (entropy, num_tokens, mean_token_accuracy, rewards, logps)",
        DPO_KEYS | {"entropy", "num_tokens", "mean_token_accuracy"},
        Reward.LOG_RATIO,
        True,
        (
            "sigmoid",
            "hinge",
            "ipo",
            "exo_pair",
            "nca_pair",
            "robust",
            "bco_pair",
            "sppo_hard",
            "aot",
            "aot_unpaired",
            "apo_zero",
            "apo_down",
            "discopop",
            "sft",
            "sigmoid_norm",
        ),
        frozenset({"aux_loss"}),
        example=_dpo_first(LN2, entropy=1.83, num_tokens=8192.0, mean_token_accuracy=0.61),
    ),
    # ---- TRL KTOTrainer: only KTO logs `kl` among TRL's preference trainers -----------------------
    Signature(
        "TRL KTOTrainer",
        "kto",
        "0.8.0-0.8.1 (early 2024)",
        "trl/trainer/kto_trainer.py:1002-1007 @ v0.8.1",
        KTO_KEYS,
        Reward.LOG_RATIO,
        True,
        example=_record(
            loss=0.5,
            grad_norm=42.1,
            learning_rate=1e-6,
            rewards__chosen=0.0,
            rewards__rejected=0.0,
            rewards__margins=0.0,
            kl=0.0,
            logps__chosen=-37.2,
            logps__rejected=-87.6,
            epoch=0.0,
        ),
    ),
    Signature(
        "TRL KTOTrainer",
        "kto",
        "0.8.2-0.8.6 (train/ and eval/ prefixes)",
        "trl/trainer/kto_trainer.py:1083-1092, log() :1284-1302 @ v0.8.6",
        KTO_KEYS,
        Reward.LOG_RATIO,
        True,
        example=_record(
            loss=0.5,
            grad_norm=12.0,
            learning_rate=5e-7,
            train__rewards__chosen=0.0,
            train__logps__chosen=-40.0,
            train__rewards__rejected=0.0,
            train__logps__rejected=-80.0,
            train__rewards__margins=0.0,
            train__kl=0.0,
            epoch=0.0,
        ),
    ),
    Signature(
        "TRL KTOTrainer",
        "kto",
        "0.9.3-0.11.4",
        "trl/trainer/kto_trainer.py:1351-1360, log() :1559-1571 @ v0.9.6",
        KTO_KEYS,
        Reward.LOG_RATIO,
        True,
        example=_record(
            loss=0.5,
            grad_norm=8.0,
            learning_rate=5e-7,
            rewards__chosen=0.0,
            logps__chosen=-40.0,
            rewards__rejected=0.0,
            logps__rejected=-80.0,
            rewards__margins=0.0,
            kl=0.0,
            epoch=0.0,
        ),
    ),
    Signature(
        "TRL KTOTrainer",
        "kto",
        "0.12.0-1.4.0 (trl.experimental from 0.26)",
        "trl/trainer/kto_trainer.py:1238-1256, log() :1457-1466 @ v0.12.2",
        KTO_KEYS | {"logits/chosen", "logits/rejected"},
        Reward.LOG_RATIO,
        True,
        ("kto", "apo_zero_unpaired"),
        example=_record(
            loss=0.5,
            grad_norm=8.0,
            learning_rate=5e-7,
            kl=0.0,
            rewards__chosen=0.0,
            logps__chosen=-40.0,
            logits__chosen=-1.2,
            rewards__rejected=0.0,
            logps__rejected=-80.0,
            logits__rejected=-1.1,
            rewards__margins=0.0,
            epoch=0.0,
        ),
    ),
    Signature(
        "TRL KTOTrainer",
        "kto",
        "1.5.0-1.9.0 (entropy and num_tokens from 1.9)",
        "trl/trainer/kto_trainer.py:1594-1655 @ v1.9.0",
        KTO_KEYS | {"logits/chosen", "logits/rejected"},
        Reward.LOG_RATIO,
        True,
        ("kto", "apo_zero_unpaired"),
        frozenset({"entropy", "num_tokens", "aux_loss"}),
        example=_record(
            loss=0.5,
            grad_norm=8.0,
            learning_rate=1e-6,
            kl=0.0,
            entropy=1.9,
            num_tokens=4096.0,
            logits__chosen=-1.2,
            logits__rejected=-1.1,
            rewards__chosen=0.0,
            logps__chosen=-40.0,
            rewards__rejected=0.0,
            logps__rejected=-80.0,
            rewards__margins=0.0,
            epoch=0.0,
        ),
    ),
    # ---- TRL BCOTrainer: `delta`, the running mean of the rewards ------------------------------------
    Signature(
        "TRL BCOTrainer",
        "bco",
        "0.11.0-1.9 (trl.experimental from 0.26)",
        "trl/trainer/bco_trainer.py:1209-1225 @ v0.11.4; trl/experimental/bco/bco_trainer.py:1331 @ v1.9.0",
        frozenset({"delta", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"}),
        Reward.LOG_RATIO,
        True,
        optional=frozenset({"logits/chosen", "logits/rejected"}),
        example=_record(
            loss=LN2,
            grad_norm=5.0,
            learning_rate=5e-7,
            delta=0.0,
            rewards__chosen=0.0,
            logps__chosen=-40.0,
            rewards__rejected=0.0,
            logps__rejected=-80.0,
            rewards__margins=0.0,
            epoch=0.0,
        ),
    ),
    # ---- TRL CPOTrainer (SimPO is its loss_type "simpo") ---------------------------------------------
    Signature(
        "TRL CPOTrainer",
        "simpo",
        "0.8.6-1.9 (trl.experimental from 0.26)",
        "trl/trainer/cpo_trainer.py:733-741 @ v0.8.6; rewards = β·logps :666, mean log-probs for ipo/simpo :768 "
        "@ v0.12.2",
        DPO_KEYS | {"nll_loss"},
        Reward.MEAN_LOGP,
        True,
        ("simpo", "ipo", "sigmoid", "hinge"),
        example=_record(
            loss=1.31,
            grad_norm=9.0,
            learning_rate=1e-6,
            rewards__chosen=-2.0 * 1.42,
            rewards__rejected=-2.0 * 1.55,
            rewards__accuracies=0.5,
            rewards__margins=2.0 * 0.13,
            logps__rejected=-1.55,
            logps__chosen=-1.42,
            logits__rejected=-1.1,
            logits__chosen=-1.2,
            nll_loss=1.42,
            epoch=0.01,
        ),
    ),
    # ---- TRL ORPOTrainer ---------------------------------------------------------------------------
    Signature(
        "TRL ORPOTrainer",
        "orpo",
        "0.8.6-1.9 (trl.experimental from 0.26)",
        "trl/trainer/orpo_trainer.py:757-767 @ v0.8.6; :814-830 @ v0.19.1",
        DPO_KEYS | {"nll_loss", "log_odds_ratio", "log_odds_chosen"},
        Reward.MEAN_LOGP,
        True,
        example=_record(
            loss=1.6,
            grad_norm=6.0,
            learning_rate=8e-6,
            rewards__chosen=-0.1 * 1.3,
            rewards__rejected=-0.1 * 1.4,
            rewards__accuracies=0.6,
            rewards__margins=0.01,
            logps__rejected=-1.4,
            logps__chosen=-1.3,
            logits__rejected=-0.9,
            logits__chosen=-0.8,
            nll_loss=1.3,
            log_odds_ratio=-0.62,
            log_odds_chosen=0.21,
            epoch=0.01,
        ),
    ),
    # ---- TRL OnlineDPOTrainer: pairs sampled online and judged; DPO's rewards beside PPO's objective/*
    Signature(
        "TRL OnlineDPOTrainer",
        "online_dpo",
        "0.11.0-1.9 (trl.experimental from 0.26)",
        "trl/trainer/online_dpo_trainer.py:466-492 @ v0.11.4; trl/experimental/online_dpo/"
        "online_dpo_trainer.py:1244-1277 @ v1.9.0",
        frozenset(
            {
                "objective/kl",
                "objective/entropy",
                "objective/non_score_reward",
                "val/contain_eos_token",
                "logps/chosen",
                "logps/rejected",
                "rewards/chosen",
                "rewards/rejected",
                "rewards/margins",
                "rewards/accuracies",
                "beta",
            }
        ),
        Reward.LOG_RATIO,
        True,
        optional=frozenset({"objective/rlhf_reward", "objective/scores", "objective/scores_margin"}),
        example=_record(
            loss=0.69,
            grad_norm=2.0,
            learning_rate=5e-7,
            **{
                "objective/kl": 0.0,
                "objective/entropy": 40.0,
                "objective/non_score_reward": 0.0,
                "objective/rlhf_reward": 0.31,
                "objective/scores": 0.31,
                "objective/scores_margin": 0.8,
            },
            val__contain_eos_token=0.9,
            logps__chosen=-60.0,
            logps__rejected=-64.0,
            rewards__chosen=0.0,
            rewards__rejected=0.0,
            rewards__margins=0.0,
            rewards__accuracies=0.0,
            beta=0.1,
            epoch=0.0,
        ),
    ),
    # ---- Not preference runs: rewards of sampled completions ------------------------------------------
    Signature(
        "TRL PPOTrainer",
        "ppo",
        "0.2-0.11 (the original PPOTrainer)",
        "trl/trainer/ppo_trainer.py:1237-1245 and :1320 @ v0.7.0",
        frozenset({"objective/kl", "objective/entropy", "ppo/mean_scores", "ppo/loss/total", "env/reward_mean"}),
        Reward.SCORE,
        False,
        example=_record(
            **{
                "objective/kl": 0.0,
                "objective/entropy": 42.0,
                "ppo/mean_scores": 0.4,
                "ppo/loss/total": 0.2,
                "env/reward_mean": 0.4,
            }
        ),
    ),
    Signature(
        "TRL PPOv2Trainer / RLOOTrainer",
        "ppo",
        "0.9-1.9 (PPO; RLOO until 0.21; trl.experimental from 0.26)",
        "trl/trainer/ppov2_trainer.py:531-547 and trl/trainer/rloo_trainer.py:447-463 @ v0.11.4",
        frozenset(
            {
                "objective/kl",
                "objective/entropy",
                "objective/non_score_reward",
                "objective/rlhf_reward",
                "objective/scores",
                "policy/approxkl_avg",
                "policy/clipfrac_avg",
                "loss/policy_avg",
                "val/ratio",
                "eps",
                "episode",
            }
        ),
        Reward.SCORE,
        False,
        example=_record(
            **{
                "objective/kl": 0.0,
                "objective/entropy": 40.0,
                "objective/non_score_reward": 0.0,
                "objective/rlhf_reward": 1.2,
                "objective/scores": 1.2,
                "policy/approxkl_avg": 0.001,
                "policy/clipfrac_avg": 0.0,
                "loss/policy_avg": -0.01,
                "val/ratio": 1.0,
                "eps": 3.0,
                "episode": 64.0,
            },
            lr=3e-6,
        ),
    ),
    Signature(
        "TRL GRPOTrainer",
        "grpo",
        "0.14.0-0.16.x",
        "trl/trainer/grpo_trainer.py:516-531 @ v0.14.0",
        frozenset({"completion_length", "reward", "reward_std", "kl"}),
        Reward.SCORE,
        False,
        example=_record(
            loss=0.0,
            grad_norm=0.4,
            learning_rate=1e-6,
            completion_length=180.0,
            reward=0.4,
            reward_std=0.3,
            kl=0.0,
            epoch=0.0,
        ),
    ),
    Signature(
        "TRL GRPOTrainer / RLOOTrainer",
        "grpo",
        "0.17.0-1.9.0 (RLOO from 0.22)",
        "trl/trainer/grpo_trainer.py:2229-2750 @ v1.9.0; trl/trainer/rloo_trainer.py:1305-1590 @ v1.9.0",
        frozenset({"completions/mean_length", "reward", "reward_std"}),
        Reward.SCORE,
        False,
        optional=frozenset({"kl", "num_tokens", "frac_reward_zero_std", "entropy", "clip_ratio/region_mean"}),
        example=_record(
            loss=0.0,
            grad_norm=0.3,
            learning_rate=1e-6,
            num_tokens=20000.0,
            completions__mean_length=150.0,
            reward=0.5,
            reward_std=0.35,
            frac_reward_zero_std=0.25,
            entropy=0.7,
            epoch=0.0,
        ),
    ),
    # ---- LLaMA-Factory (stage: dpo with pref_loss sigmoid/hinge/ipo/kto_pair/orpo/simpo; stage: kto) -----
    Signature(
        "LLaMA-Factory CustomDPOTrainer",
        "dpo",
        "0.6-0.9",
        "src/llamafactory/train/dpo/trainer.py:305-312 @ ff6d4d1",
        DPO_KEYS,
        Reward.LOG_RATIO,
        True,
        ("sigmoid", "hinge", "ipo", "kto_pair", "bco"),
        example=_dpo_first(LN2),
    ),
    Signature(
        "LLaMA-Factory CustomDPOTrainer",
        "simpo",
        "0.8-0.9",
        "src/llamafactory/train/dpo/trainer.py:198-203 (rewards = β·mean log-prob), :305-312 @ ff6d4d1",
        DPO_KEYS,
        Reward.MEAN_LOGP,
        True,
        ("simpo",),
        example=_record(
            loss=1.4,
            grad_norm=4.0,
            learning_rate=1e-6,
            rewards__chosen=-2.0 * 1.2,
            rewards__rejected=-2.0 * 1.3,
            rewards__accuracies=0.6,
            rewards__margins=0.2,
            logps__chosen=-1.2,
            logps__rejected=-1.3,
            logits__chosen=-0.7,
            logits__rejected=-0.7,
            epoch=0.01,
        ),
    ),
    Signature(
        "LLaMA-Factory CustomDPOTrainer",
        "orpo",
        "0.6-0.9",
        "src/llamafactory/train/dpo/trainer.py:313-315 @ ff6d4d1",
        DPO_KEYS | {"sft_loss", "odds_ratio_loss"},
        Reward.MEAN_LOGP,
        True,
        ("orpo",),
        example=_record(
            loss=1.2,
            grad_norm=3.0,
            learning_rate=5e-6,
            rewards__chosen=-0.098,
            rewards__rejected=-0.11,
            rewards__accuracies=0.6,
            rewards__margins=0.012,
            logps__chosen=-0.98,
            logps__rejected=-1.1,
            logits__chosen=-0.5,
            logits__rejected=-0.5,
            sft_loss=0.98,
            odds_ratio_loss=2.2,
            epoch=0.01,
        ),
    ),
    Signature(
        "LLaMA-Factory CustomKTOTrainer",
        "kto",
        "0.8-0.9",
        "src/llamafactory/train/kto/trainer.py:256-267, log() :295-306 @ ff6d4d1",
        KTO_KEYS | {"logits/chosen", "logits/rejected"},
        Reward.LOG_RATIO,
        True,
        example=_record(
            loss=0.5,
            grad_norm=6.0,
            learning_rate=5e-6,
            rewards__chosen=0.0,
            logps__chosen=-50.0,
            logits__chosen=-1.0,
            rewards__rejected=0.0,
            logps__rejected=-70.0,
            logits__rejected=-1.0,
            rewards__margins=0.0,
            kl=0.0,
            epoch=0.0,
        ),
    ),
    # ---- OpenRLHF: its own logger (train/ and eval/ prefixes to W&B or TensorBoard) ---------------------
    Signature(
        "OpenRLHF DPOTrainer",
        "dpo",
        "0.x",
        "openrlhf/trainer/dpo_trainer.py:188-206 @ 3c3be62",
        frozenset({"rewards/chosen", "rewards/rejected", "acc", "lr", "loss_mean", "acc_mean"}),
        Reward.LOG_RATIO,
        True,
        optional=frozenset({"nll_loss"}),
        example=_record(
            loss=LN2,
            acc=0.0,
            chosen_reward=0.0,
            reject_reward=0.0,
            lr=5e-7,
            grad_norm=2.0,
            loss_mean=LN2,
            acc_mean=0.0,
        ),
    ),
)
