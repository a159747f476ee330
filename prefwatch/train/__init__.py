"""The training job: the only package of prefwatch that imports torch, transformers, trl, peft and datasets.

Run one cell with `python -m prefwatch.train CELL.json [--resume]`; see run.py for what it writes.
"""
