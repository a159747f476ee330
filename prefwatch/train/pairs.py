"""Per-pair held-out rewards, taken from TRL's own evaluation forward pass.

TRL logs only batch means of the rewards. The monitor wants each held-out pair's chosen and rejected
reward at every evaluation (which pairs flip, and when), and a second forward pass would double the
cost of evaluation. So each trainer subclass below keeps the per-example rewards that TRL computes
anyway, and `evaluate` writes them as one line of eval_pairs.jsonl.

How the rewards are reached depends on the trainer:
  * CPO (SimPO) and ORPO return them from `cpo_loss` / `odds_ratio_loss`: wrap the method.
  * DPO computes them inline in `_compute_loss`, from the per-token log-probs of two forwards (policy,
    then reference with the adapter disabled). A forward hook keeps those outputs, and the rewards are
    rebuilt with TRL's own arithmetic: beta * (sum logp_policy - sum logp_ref), batch laid out [chosen, rejected].
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from trl import DPOTrainer
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer

from prefwatch.files import safe
from prefwatch.train.best import BestAdapter


class PairLog:
    """eval_pairs.jsonl: one line per evaluation with every held-out pair's chosen and rejected reward."""

    def __init__(self, path: Path, n_pairs: int):
        self.path = path
        self.pair_ids = [f"h{i:04d}" for i in range(n_pairs)]

    def write(self, step: int, chosen: list[float], rejected: list[float]) -> None:
        record = {"step": step, "time": time.time(), "pair_ids": self.pair_ids, "chosen": chosen, "rejected": rejected}
        with safe.open_append(self.path) as f:
            f.write((json.dumps(record) + "\n").encode())


class PairRewardsMixin:
    """Collects per-example rewards while `evaluate` runs and writes them when it ends."""

    pair_log: PairLog | None = None
    best_adapter: BestAdapter | None = None  # keeps the adapter at the best held-out accuracy (best.py)
    _pair_rewards: tuple[list[float], list[float]] | None = None

    def evaluate(self, *args, **kwargs):
        if self.pair_log is None:  # capture off: plain TRL evaluation
            return super().evaluate(*args, **kwargs)
        self._pair_rewards = ([], [])
        try:
            metrics = super().evaluate(*args, **kwargs)
            if self.is_world_process_zero():
                self.pair_log.write(self.state.global_step, *self._pair_rewards)
                if self.best_adapter is not None:
                    self.best_adapter.offer(self.state.global_step, *self._pair_rewards, self.model)
        finally:
            self._pair_rewards = None
        return metrics

    def _keep_pair_rewards(self, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        if self._pair_rewards is None:  # training, not evaluating
            return
        self._pair_rewards[0].extend(self.accelerator.gather_for_metrics(chosen.detach()).float().tolist())
        self._pair_rewards[1].extend(self.accelerator.gather_for_metrics(rejected.detach()).float().tolist())


class DPOPairTrainer(PairRewardsMixin, DPOTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._pair_rewards is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with _recorded_outputs(self.accelerator.unwrap_model(self.model)) as outputs:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        policy_logps = outputs[0].log_probs.sum(dim=1)  # zero where the label is masked, as TRL relies on
        if "ref_chosen_logps" in inputs:  # precompute_ref_log_probs: no reference forward ran
            ref_logps = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]])
        else:
            ref_logps = outputs[1].log_probs.sum(dim=1)
        policy_chosen, policy_rejected = policy_logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        self._keep_pair_rewards(self.beta * (policy_chosen - ref_chosen), self.beta * (policy_rejected - ref_rejected))
        return result


class CPOPairTrainer(PairRewardsMixin, CPOTrainer):
    def cpo_loss(self, policy_chosen_logps, policy_rejected_logps):
        losses, chosen_rewards, rejected_rewards = super().cpo_loss(policy_chosen_logps, policy_rejected_logps)
        self._keep_pair_rewards(chosen_rewards, rejected_rewards)
        return losses, chosen_rewards, rejected_rewards


class ORPOPairTrainer(PairRewardsMixin, ORPOTrainer):
    def odds_ratio_loss(self, policy_chosen_logps, policy_rejected_logps):
        result = super().odds_ratio_loss(policy_chosen_logps, policy_rejected_logps)
        self._keep_pair_rewards(result[1], result[2])
        return result


@contextmanager
def _recorded_outputs(module: torch.nn.Module):
    """The outputs of every call of `module` inside the block, in call order."""
    outputs = []
    handle = module.register_forward_hook(lambda _module, _args, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()
