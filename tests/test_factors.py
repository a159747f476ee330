"""A run's factors (prefwatch.core.factors, prefwatch.ingest.factors): names in any notation, recorded
configurations, which place wins, what makes two cells seeds of one setting, and the verdict over a
sweep of other factors (prefwatch.core.decide). Expected values are worked out by hand in each test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import wait_for

from prefwatch.core.decide import CellResult, decide, seeds_of
from prefwatch.core.diagnose import Diagnosis, Review
from prefwatch.core.factors import Factors, HeldoutSet, Origin, config_factors, name_factors, setting_key, sweep_stem
from prefwatch.ingest.discover import open_path
from prefwatch.ingest.factors import folder_factors


@pytest.mark.parametrize(
    ("name", "factors"),
    [
        ("gemma-2-2b-lr1.1e-05-beta0.2-20250301-0424", {"lr": 1.1e-05, "beta": 0.2}),
        ("dpo-r8-b0.1-lr5e-05-seed1", {"rank": 8, "beta": 0.1, "lr": 5e-05, "seed": 1}),
        (
            "run_beta0p05_lr=2e-6_bs16-rank_32 seed 7",
            {"beta": 0.05, "lr": 2e-06, "batch_size": 16, "rank": 32, "seed": 7},
        ),
        ("simpo-gamma0.5-b2.5-learning_rate.0003", {"gamma": 0.5, "beta": 2.5, "lr": 0.0003}),
        ("qwen2.5-0.5b-dpo", {}),  # 0.5b is a model size: a b that does not start a token is no β
        ("llama-3-8b-r1.5-seed-x", {}),  # a rank is a whole number; "seed-x" has none
        ("lr_scheduler-cosine-rank", {}),  # key words without their number
        ("DPO-R16-SEED3", {"rank": 16, "seed": 3}),
    ],
)
def test_names_give_factors_in_any_notation(name: str, factors: dict) -> None:
    assert name_factors(name) == factors


def test_recorded_configs_are_read_as_numbers_with_their_keys() -> None:
    # MLflow keeps every param as text; TrainingArguments' max_steps -1 means none; output_dir and
    # report_to name where the run wrote, never a setting; "None" is no value.
    params = {
        "learning_rate": "5e-05",
        "seed": "42",
        "max_steps": "-1",
        "peft_config": "{'default': LoraConfig(peft_type='LORA', r=16, lora_alpha=32)}",
        "output_dir": "/runs/x",
        "report_to": "['mlflow']",
        "warmup_ratio": "0.1",
        "beta": "None",
        "model_name_or_path": "Qwen/Qwen2.5-0.5B",
    }
    factors = config_factors(params, Origin.MLFLOW_PARAMS)
    assert {name: v.value for name, v in factors.values.items()} == {
        "lr": 5e-05,
        "seed": 42,
        "rank": 16,
        "warmup_ratio": 0.1,
        "model": "Qwen/Qwen2.5-0.5B",
    }
    assert factors.values["lr"].where == "MLflow params (learning_rate)"


def test_a_record_of_the_run_wins_over_its_name_whatever_the_order_read() -> None:
    factors = Factors()
    factors.add("lr", 1e-05, Origin.FOLDER_NAME)
    factors.add("lr", 1.0825e-05, Origin.TRAINER_STATE, "trial_params")
    factors.add("lr", 3e-05, Origin.RUN_NAME)
    assert (factors.get("lr"), factors.origin("lr")) == (1.0825e-05, Origin.TRAINER_STATE)


def named(cell_id: str, **given: object) -> Factors:
    """A folder's factors as its name gives them, plus ``given`` from a record (cell.json)."""
    factors = Factors()
    for name, value in name_factors(cell_id).items():
        factors.add(name, value, Origin.FOLDER_NAME)
    for name, value in given.items():
        factors.add(name, value, Origin.CELL)
    return factors


def test_seeds_are_replicates_only_of_one_setting() -> None:
    def same(a: str, b: str, **given: object) -> bool:
        return setting_key(a, named(a, **given)) == setting_key(b, named(b, **given))

    # Names that differ only by their seed (and time stamp) look like one sweep.
    assert same("dpo-r8-seed0-20250301", "dpo-r8-seed1-20250302")
    assert sweep_stem("dpo-r8-seed0-20250301") == sweep_stem("dpo-r8-seed1-20250302")
    # Runs of two names, whose records leave the learning rate unknown, are not one setting's seeds.
    assert not same("runA-seed1", "runB-seed2")
    # A factor that differs (β) makes two settings, whatever the names.
    assert not same("dpo-b0.1-seed0", "dpo-b0.5-seed1")
    # A run without a seed is nobody's replicate, even under an identical name elsewhere.
    assert setting_key("x", Factors()) != setting_key("x2", Factors())
    # Records that name every core setting: the names need not look alike (a launched grid's ids).
    record = {"lr": 5e-4, "model": "tiny", "data": "tiny-sales"}
    a, b = Factors(), Factors()
    for factors, seed in ((a, 0), (b, 1)):
        for name, value in {**record, "seed": seed}.items():
            factors.add(name, value, Origin.CELL)
    assert setting_key("dpo-r8-s0", a) == setting_key("dpo-r8-s1", b)


def test_two_runs_of_one_seed_are_reruns_not_replicates() -> None:
    cells = [result("dpo-seed0", 80, seed=0), result("dpo-seed0-again", 80, seed=0), result("dpo-seed1", 70, seed=1)]
    groups = seeds_of(cells)
    # seed0-again's stem differs; the two seed-0 runs can never be two seeds of one setting.
    assert all(len({c.seed for c in group}) == len(group) for group in groups)


def test_held_out_sets_are_the_same_only_with_the_same_size_and_pairs() -> None:
    assert HeldoutSet(100, "a").same_as(HeldoutSet(100, "a"))
    assert HeldoutSet(100, None).same_as(HeldoutSet(100, "a"))  # no per-pair results: the size decides
    assert not HeldoutSet(100, "a").same_as(HeldoutSet(100, "b"))
    assert not HeldoutSet(100).same_as(HeldoutSet(750))
    assert not HeldoutSet(None).same_as(HeldoutSet(None))


# ---- files beside a run -----------------------------------------------------------------------------


def test_a_run_folder_gives_its_factors_from_every_file_beside_it(tmp_path: Path) -> None:
    run = tmp_path / "qwen-dpo-lr9e-06-b0.3"
    (run / "checkpoint-20").mkdir(parents=True)
    (run / "checkpoint-20" / "adapter_config.json").write_text(
        json.dumps({"r": 32, "lora_alpha": 64, "base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"})
    )
    (run / "training_args.json").write_text(
        json.dumps({"learning_rate": 5e-06, "seed": 7, "per_device_train_batch_size": 4, "output_dir": str(run)})
    )
    (run / "config.yaml").write_text(
        "model_name_or_path: meta-llama/Llama-3.2-1B  # a comment\npref_beta: 0.25\nlora_rank: 8\n"
        "dataset: ultrafeedback\nnested:\n  learning_rate: 1.0\n"
    )
    (run / "all_results.json").write_text(json.dumps({"eval_samples": 500, "train_loss": 0.4, "epoch": 1.0}))
    (run / "README.md").write_text("---\nbase_model: google/gemma-2-2b\ndatasets: trl-lib/ultrafeedback\n---\n# card\n")
    factors = folder_factors(run)
    where = {name: (v.value, v.where) for name, v in factors.values.items()}
    # adapter_config.json first for the rank and model, then training_args.json, config.yaml,
    # all_results.json, the model card, and the name last (its lr9e-06 and b0.3 lose to the records; the
    # card's base model to the adapter's, its data set to config.yaml's).
    assert where == {
        "rank": (32, "adapter_config.json (checkpoint-20/adapter_config.json)"),
        "model": ("Qwen/Qwen2.5-0.5B-Instruct", "adapter_config.json (checkpoint-20/adapter_config.json)"),
        "lora_alpha": (64, "adapter_config.json (checkpoint-20/adapter_config.json)"),
        "lr": (5e-06, "training_args.json (learning_rate)"),
        "seed": (7, "training_args.json (seed)"),
        "batch_size": (4, "training_args.json (per_device_train_batch_size)"),
        "beta": (0.25, "config.yaml (pref_beta)"),
        "data": ("ultrafeedback", "config.yaml (dataset)"),
        "heldout": (500, "all_results.json (eval_samples)"),  # train_loss and epoch are results, no settings
    }


def test_files_that_are_no_configuration_are_named_never_opened(tmp_path: Path, capsys) -> None:
    run = tmp_path / "dpo-r8"
    run.mkdir()
    (run / "training_args.json").write_text('{"learning_rate": 5e-05,')  # cut short
    os.mkfifo(run / "all_results.json")  # a pipe would block whoever opens it
    (run / "metrics.jsonl").write_text(json.dumps({"loss": 0.5, "step": 1}) + "\n")
    (cell,) = open_path(run.parent).cells
    assert cell.factor_problems == [
        f"{run / 'training_args.json'}: not a JSON object (ignored)",
        f"{run / 'all_results.json'}: not a regular file (ignored)",
    ]
    assert (cell.rank, cell.factors.get("lr")) == (8, None)


def test_trainer_state_gives_a_searchs_trial_params(tmp_path: Path) -> None:
    run = tmp_path / "trial-3"
    run.mkdir()
    state = {
        "log_history": [{"loss": 0.6, "step": 1}],
        "trial_params": {"learning_rate": 3.2e-05, "beta": 0.15},
        "train_batch_size": 16,
        "max_steps": 10,
        "global_step": 1,
    }
    (run / "trainer_state.json").write_text(json.dumps(state))
    (cell,) = open_path(run).cells
    cell.poll()
    assert {n: (v.value, v.where) for n, v in cell.factors.values.items()} == {
        "lr": (3.2e-05, "trainer_state.json (learning_rate)"),
        "beta": (0.15, "trainer_state.json (beta)"),
        "batch_size": (16, "trainer_state.json (train_batch_size)"),
        "max_steps": (10, "trainer_state.json (max_steps)"),
    }


# ---- the verdict over a sweep of other factors ------------------------------------------------------

PAIRS = 100


def result(cell_id: str, won: int, seed: int | None = None, model: str = "tiny", **given: object) -> CellResult:
    """A finished DPO cell at rank 8 that ranks the first ``won`` of 100 held-out pairs right."""
    factors = Factors()
    for name, value in {"objective": "dpo", "rank": 8, "lr": 5e-4, "model": model, "data": "d", **given}.items():
        factors.add(name, value, Origin.CELL)
    if seed is not None:
        factors.add("seed", seed, Origin.CELL)
    review = Review(
        train_margin_late=1.0,
        heldout_margin=0.5,
        heldout_pairs_won=won,
        heldout_pairs=PAIRS,
        heldout_accuracy=won / PAIRS,
    )
    wins = np.arange(PAIRS) < won
    return CellResult(
        cell_id, "dpo", 8, seed, True, Diagnosis(review, []), wins, factors=factors, heldout=HeldoutSet(PAIRS, "p")
    )


def test_a_beta_sweep_names_the_best_setting_and_the_factor_that_decides() -> None:
    # β 0.1: seeds 80, 82 (mean 81); β 0.5: 60, 66 (mean 63). Best setting β=0.1 by 18 pairs, beyond the
    # spread across seeds (6); best cells 82 vs 66: 16 discordant pairs, p = 2 / 2**16 = 3.1e-5. The
    # effect of β: 0.81 - 0.63 = 0.18 held-out accuracy, 18 pairs; it is the only factor, so it decides.
    cells = [
        result("dpo-b0.1-s0", 80, 0, beta=0.1),
        result("dpo-b0.1-s1", 82, 1, beta=0.1),
        result("dpo-b0.5-s0", 60, 0, beta=0.5),
        result("dpo-b0.5-s1", 66, 1, beta=0.5),
    ]
    verdict = decide(cells)
    assert verdict.setting == {"beta": "0.1"} and verdict.headline == "dpo r=8 β=0.1 (decisive)"
    assert verdict.reasons == [
        "only dpo cells to compare: the objective is not in question",
        "best setting of β: β=0.1 wins 81 of 100 held-out pairs (mean of 2 seeds), the next, β=0.5, 63",
    ]
    assert [(c.winner, c.other, c.only_winner, c.only_other) for c in verdict.comparisons] == [
        ("dpo-b0.1-s1", "dpo-b0.5-s1", 16, 0)
    ]
    (effect,) = verdict.factor_effects
    assert (effect.factor, effect.within, round(effect.size, 6), effect.pairs) == ("beta", "dpo", 0.18, 18.0)
    assert verdict.decides == "β decides the most (0.18 held-out accuracy between its levels)"
    # The same with seeds that disagree more than the settings: β=0.5's seeds 60 and 90 (mean 75):
    # 81 - 75 = 6 pairs, inside the spread of 30: not decisive, and the effect is inside it too.
    cells[3] = result("dpo-b0.5-s1", 90, 1, beta=0.5)
    verdict = decide(cells)
    assert not verdict.decisive
    assert (
        "the setting difference (6.0 pairs on average) is inside the spread across seeds (30 pairs)" in verdict.reasons
    )
    assert verdict.decides is not None and verdict.decides.endswith(
        "no effect is larger than the spread across seeds (0.30)"
    )


def test_runs_of_other_base_models_are_decided_apart() -> None:
    # Two models named, one run naming none: three groups; pairs never compared across them.
    cells = [
        result("a-b0.1", 80, model="org/model-a", beta=0.1),
        result("a-b0.5", 60, model="org/model-a", beta=0.5),
        result("b-run", 95, model="model-b"),
        CellResult("loose", "dpo", 8, None, True, result("x", 70).diagnosis, None, heldout=HeldoutSet(PAIRS)),
    ]
    verdict = decide(cells)
    assert verdict.reasons[0].startswith(
        "not one grid (different base models: org/model-a (2 cells), model-b (1 cell), unknown (1 cell))"
    )
    labels = [(g.label, g.cells, g.verdict.setting) for g in verdict.groups]
    assert labels == [
        ("model org/model-a", ["a-b0.1", "a-b0.5"], {"beta": "0.1"}),
        ("model model-b", ["b-run"], {}),
        ("model unknown", ["loose"], {}),
    ]
    assert not verdict.decisive and verdict.headline == "3 groups, decided apart (not decisive)"
    # A local copy of a model is the same model: compared by the last part of its id, as one grid.
    same = [result("a", 80, model="org/model-a", beta=0.1), result("b", 60, model="/data/model-a/", beta=0.5)]
    assert decide(same).groups == []


def test_cells_of_one_size_but_other_pairs_are_not_compared_pair_by_pair() -> None:
    # Two cells of 100 held-out pairs each, but different pair ids in their per-pair results: two
    # held-out sets, decided apart; across them only accuracies.
    a, b = result("a-b0.1", 80, beta=0.1), result("b-b0.5", 60, beta=0.5)
    b.heldout = HeldoutSet(PAIRS, "other pairs")
    verdict = decide([a, b])
    assert verdict.reasons[0].startswith(
        "not one grid (different held-out sets: 100 pairs (1 cell), 100 pairs (1 cell))"
    )
    assert verdict.reasons[1].startswith("across different held-out sets only held-out accuracies are compared")
    assert not verdict.comparisons and all(not g.verdict.comparisons for g in verdict.groups)


def test_a_wandb_run_gives_the_config_passed_to_init_and_its_later_updates(tmp_path: Path, monkeypatch) -> None:
    """Real W&B, offline: ``wandb.init(config=...)`` keeps its config in the run record, a later
    ``config.update`` in a config record; both are read, the later value winning."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(
        project="p", name="dpo-r8-seed3", dir=str(tmp_path), config={"learning_rate": 5e-05, "beta": 0.25, "seed": 3}
    )
    run.log({"train/loss": 0.69, "train/rewards/chosen": 0.0, "train/rewards/rejected": 0.0}, step=1)
    run.config.update({"beta": 0.3}, allow_val_change=True)
    run.log({"train/loss": 0.6, "train/rewards/chosen": 0.1, "train/rewards/rejected": -0.1}, step=2)
    run.finish()
    # W&B's own process may still be writing the run's file when finish() returns: wait for its run record.
    wait_for(lambda: open_path(tmp_path / "wandb").cells[0].id == "dpo-r8-seed3", 60, "the run record")
    (cell,) = open_path(tmp_path / "wandb").cells
    where = {
        name: (v.value, v.where) for name, v in cell.factors.values.items() if name in ("lr", "beta", "seed", "rank")
    }
    assert where == {
        "lr": (5e-05, "W&B config (learning_rate)"),
        "beta": (0.3, "W&B config (beta)"),
        "seed": (3, "W&B config (seed)"),
        "rank": (8, "run name"),
    }
    assert cell.claim is not None and (cell.claim.rank_source, cell.claim.objective_source) == ("run name", "run name")


def test_an_mlflow_run_gives_its_params_and_tags(tmp_path: Path) -> None:
    """Real MLflow (its client, SQLite store): params are settings, tags too (MLflow's own mlflow.* are not)."""
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run("0", run_name="sweep-7", tags={"dataset": "ultrafeedback", "team": "x"}).info.run_id
    client.log_param(run_id, "learning_rate", "2e-06")
    client.log_param(run_id, "beta", "0.05")
    client.log_metric(run_id, "loss", 0.69, step=1)
    (cell,) = open_path(tmp_path / "mlflow.db").cells
    where = {name: (v.value, v.where) for name, v in cell.factors.values.items()}
    assert where == {
        "lr": (2e-06, "MLflow params (learning_rate)"),
        "beta": (0.05, "MLflow params (beta)"),
        "data": ("ultrafeedback", "MLflow tags (dataset)"),
        "team": ("x", "MLflow tags (team)"),
    }
