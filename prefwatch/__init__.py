"""prefwatch: launch, watch and decide a preference-tuning grid (DPO / SimPO / ORPO x LoRA rank)."""

__version__ = "0.1.0"
