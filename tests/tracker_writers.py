"""Runs written by the real trackers (trackio, MLflow, wandb), each in a process of its own as a
training script would: the keys and steps TRL's callbacks log (``train/`` and ``eval/`` prefixes for
trackio and W&B, TRL's own names for MLflow), plausible DPO values, and the tracker's own ending
(``finish()``, an MLflow status, a W&B exit code). Offline and local: nothing touches the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import json, math, os, sys, time
spec = json.loads(sys.argv[1])
kind, name, steps, every = spec["kind"], spec["name"], spec["steps"], spec["eval_every"]
config = {"loss_type": "sigmoid", "precompute_ref_log_probs": False, "max_steps": spec.get("max_steps", steps), **spec["config"]}


def train(step):
    chosen = 0.02 * step
    return {"loss": 0.693 - 0.004 * step, "rewards/chosen": chosen, "rewards/rejected": -chosen,
            "rewards/margins": 2 * chosen, "rewards/accuracies": min(1.0, 0.5 + 0.01 * step)}


def evaluate(step):
    return {"eval_loss": 0.69 - 0.003 * step, "eval_rewards/chosen": 0.01 * step,
            "eval_rewards/rejected": -0.01 * step, "eval_rewards/margins": 0.02 * step,
            "eval_rewards/accuracies": 0.5 + 0.01 * step}


def prefixed(values, split):
    out = {}
    for key, value in values.items():
        key = key[5:] if key.startswith("eval_") else key
        out[f"{split}/{key}"] = value
    return out


sleep = spec.get("sleep", 0.0)
first = spec.get("first_step", 1)
if kind == "trackio":
    import trackio
    trackio.init(project=spec["project"], name=name, config=config)
    for step in range(first, steps + 1):
        trackio.log({**prefixed(train(step), "train"), "train/global_step": step})
        if step % every == 0:
            trackio.log({**prefixed(evaluate(step), "eval"), "train/global_step": step})
        time.sleep(sleep)
    if spec.get("end", True):
        trackio.log({"train/epoch": 1.0, "train/global_step": steps})
    trackio.finish()
elif kind == "mlflow":
    import mlflow
    mlflow.set_tracking_uri(spec["uri"])
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params(config)
        for step in range(first, steps + 1):
            mlflow.log_metrics(train(step), step=step)
            if step % every == 0:
                mlflow.log_metrics(evaluate(step), step=step)
            time.sleep(sleep)
        if spec.get("end", True):
            mlflow.log_metrics({"train_runtime": 1.5, "train_loss": 0.5}, step=steps)
        status = spec.get("status", "FINISHED")
        if status == "RUNNING":  # like a killed job: the run stays RUNNING
            print("written", flush=True)
            os._exit(0)
        mlflow.end_run(status=status)
elif kind == "wandb":
    import wandb
    run = wandb.init(project="p", name=name, config=config, mode="offline", dir=spec["dir"])
    for step in range(first, steps + 1):
        row = {**prefixed(train(step), "train"), "train/global_step": step}
        if step % every == 0:
            row.update(prefixed(evaluate(step), "eval"))
        run.log(row)
        time.sleep(sleep)
    if spec.get("end", True):
        run.summary.update({"train/train_runtime": 1.5, "train/train_loss": 0.5})
    run.finish(exit_code=spec.get("exit_code", 0))
print("written", flush=True)
"""


def env(root: Path) -> dict[str, str]:
    """The environment of a script whose trackers write under ``root`` only."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "TRACKIO_"))}
    return {
        **clean,
        "TRACKIO_DIR": str(root / "trackio"),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def start(kind: str, root: Path, name: str, steps: int = 12, eval_every: int = 4, **spec: object) -> subprocess.Popen:
    """Start one run's writer (``kind`` trackio, mlflow or wandb) in a process of its own."""
    (root / "wandb-dir").mkdir(parents=True, exist_ok=True)
    full = {
        "kind": kind,
        "name": name,
        "steps": steps,
        "eval_every": eval_every,
        "project": "proj",
        "uri": f"sqlite:///{root / 'mlflow.db'}",
        "dir": str(root / "wandb-dir"),
        "config": {},
        **spec,
    }
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(full)],
        env=env(root),
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def write(kind: str, root: Path, name: str, steps: int = 12, **spec: object) -> str:
    """Write one run to the end; its output (AssertionError with it when the writer failed)."""
    process = start(kind, root, name, steps, **spec)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0 and "written" in output, output[-3000:]
    return output


def store_of(kind: str, root: Path) -> Path:
    """What a user points prefwatch at for the runs of ``kind`` written under ``root``."""
    return {"trackio": root / "trackio", "mlflow": root / "mlflow.db", "wandb": root / "wandb-dir" / "wandb"}[kind]
