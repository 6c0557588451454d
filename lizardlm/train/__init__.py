"""Two-stage linearization: attention transfer, then LoRA fine-tuning."""

from lizardlm.train.linearize import linearize
from lizardlm.train.rundir import RunDir, load_run
from lizardlm.train.settings import PRESETS, TrainSettings, settings_from_preset

__all__ = ["PRESETS", "RunDir", "TrainSettings", "linearize", "load_run", "settings_from_preset"]
