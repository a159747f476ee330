"""The catalogue of trainer signatures (prefwatch/core/signatures.py), each entry read from its
trainer's own code at the version and line it cites: every example record is recognised as its own
trainer, every DPOTrainer loss type is named by its first loss, and the keys the inference relies on
belong, in the catalogue, to the trainers it names them for."""

from __future__ import annotations

import math
import re

import pytest

from prefwatch.core import metrics as m
from prefwatch.core.objectives import FAMILY, START_GROUPS, Claim, agrees, catalogued, infer, mismatch
from prefwatch.core.series import CellSeries
from prefwatch.core.signatures import SIGNATURES, Reward, first_loss


def series_of(*records: dict) -> CellSeries:
    series = CellSeries()
    for step, record in enumerate(records, start=1):
        series.add({**record, "step": step})
    return series


def later(record: dict, by: float = 1.01) -> dict:
    """The record a step on: rewards and log-probs moved by the same factor (ratios kept)."""
    return {k: v * by if k.split("/")[-2:-1] and ("rewards" in k or "logps" in k) else v for k, v in record.items()}


@pytest.mark.parametrize("signature", SIGNATURES, ids=[f"{s.trainer} {s.versions}" for s in SIGNATURES])
def test_each_entry_cites_its_code_and_its_example_is_recognised(signature) -> None:
    assert re.search(r"\.py:\d+", signature.source) and "@" in signature.source, signature.source
    example = dict(signature.example)
    names = {m.canonical(k)[1] for k in example}
    assert signature.keys <= names, signature.keys - names  # the example holds every key the entry lists
    inference = infer(series_of(example, later(example), later(example, 1.02)))
    assert inference.objective == signature.objective, inference
    assert inference.preference is signature.preference
    assert signature in catalogued(names) or signature in catalogued(names, signature.objective)
    assert inference.trainer is not None and signature.trainer in inference.trainer, inference.trainer
    assert signature.versions in inference.trainer
    if signature.reward is not None and signature.preference:
        assert inference.reward is signature.reward, (inference.reward, signature.reward)
    # A label naming the trainer's own objective is never contradicted.
    assert mismatch(Claim(signature.objective, "folder name"), inference) is None


@pytest.mark.parametrize("loss_type", [t for group in START_GROUPS for t in group] + ["ipo", "sppo_hard", "exo_pair"])
def test_each_dpo_loss_type_is_named_by_its_first_loss(loss_type: str) -> None:
    """dpo_trainer.py's losses at zero rewards (v1.9.0 lines 1421-1530): the group that starts at the
    same value is named, its head first; the squared losses (IPO, SPPO-hard, EXO at ε = 1e-3) read as IPO."""
    loss = first_loss(loss_type)
    assert loss is not None
    zero = {"loss": round(loss, 4), "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0}
    moved = {"loss": 0.6, "rewards/chosen": 0.01, "rewards/rejected": -0.02, "rewards/margins": 0.03}
    inference = infer(series_of(zero, moved))
    if loss > 1.5:
        assert (inference.objective, inference.loss_type) == ("ipo", "ipo")
        return
    (group,) = [g for g in START_GROUPS if loss_type in g]
    assert (inference.objective, inference.loss_type) == ("dpo", group[0])
    assert all(name in inference.evidence for name in group)
    assert inference.reward is Reward.LOG_RATIO


def test_a_first_loss_matching_no_loss_type_says_so() -> None:
    zero = {"loss": 0.61, "rewards/chosen": 0.0, "rewards/rejected": 0.0}
    inference = infer(series_of(zero, zero))
    assert inference.objective == "dpo" and inference.loss_type is None and "names no loss type" in inference.evidence


def test_the_keys_the_inference_reads_belong_to_the_trainers_it_names() -> None:
    """The markers objectives._by_keys uses, checked against the catalogue rather than assumed."""
    preference = [s for s in SIGNATURES if s.preference]
    assert {s.objective for s in preference if "kl" in s.keys | s.optional} == {"kto"}
    assert not any("rewards/accuracies" in s.keys for s in SIGNATURES if s.objective == "kto")
    assert {s.objective for s in SIGNATURES if "delta" in s.keys} == {"bco"}
    assert {s.objective for s in SIGNATURES if s.keys & {"log_odds_ratio", "odds_ratio_loss"}} == {"orpo"}
    with_scores = [s for s in SIGNATURES if (s.keys | s.optional) & {"objective/kl", "objective/rlhf_reward"}]
    assert {s.objective for s in with_scores if m.CHOSEN in s.keys} == {"online_dpo"}
    assert {s.objective for s in with_scores if m.CHOSEN not in s.keys} == {"ppo"}
    assert all(not s.preference for s in SIGNATURES if s.reward is Reward.SCORE)


def test_a_kto_run_is_kto_in_every_key_era_and_its_label_stands() -> None:
    """Issue 23: an early-2024 KTO run (kl, rewards, margins, logps; no *_sum or count/* keys) was read as
    DPO and its right label turned into an objective_mismatch error."""
    for signature in (s for s in SIGNATURES if s.objective == "kto"):
        inference = infer(series_of(dict(signature.example), later(dict(signature.example))))
        assert inference.objective == "kto" and "0 at step 1" in inference.evidence
        assert mismatch(Claim("kto", "folder name"), inference) is None
        assert "KTO" in (mismatch(Claim("simpo", "folder name"), inference) or "")


@pytest.mark.parametrize(
    "claim, shown, loss_type, agree",
    [
        ("dpo", "ipo", "ipo", True),  # IPO is a loss type of DPOTrainer
        ("ipo", "dpo", "sigmoid", True),  # a first loss of ln 2 is also IPO's at β ≈ 0.6
        ("kto", "dpo", "kto_pair", True),  # DPOTrainer's kto_pair
        ("dpo", "online_dpo", None, True),
        ("simpo", "dpo", "sigmoid", False),
        ("dpo", "kto", None, False),
        ("dpo", "grpo", None, False),
        ("grpo", "ppo", None, True),
    ],
)
def test_labels_agree_within_a_family(claim: str, shown: str, loss_type: str | None, agree: bool) -> None:
    from prefwatch.core.objectives import Inference

    inference = Inference(shown, True, "…", loss_type=loss_type)
    assert agrees(Claim(claim, "folder name"), inference) is agree
    assert (mismatch(Claim(claim, "folder name"), inference) is None) is agree
    assert set(FAMILY) >= {claim, shown}


def test_first_loss_values_from_the_code() -> None:
    assert first_loss("sigmoid") == pytest.approx(math.log(2))
    assert first_loss("ipo", beta=0.1) == pytest.approx(25.0)
    assert first_loss("sppo_hard", beta=0.1) == pytest.approx(50.0)
    assert first_loss("nca_pair") == pytest.approx(2 * math.log(2))
    assert first_loss("sft") is None


def test_the_docs_list_every_entry() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "signatures.md").read_text()
    for signature in SIGNATURES:
        assert f"| {signature.trainer} | {signature.objective} | {signature.versions} |" in doc
        assert f"`{signature.source}`" in doc
