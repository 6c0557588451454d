"""Two-stage linearization: attention transfer, then LoRA fine-tuning (names imported on first use)."""

from lizardlm._lazy import lazy_exports

__all__ = ["PRESETS", "RunDir", "TrainSettings", "linearize", "load_run", "settings_from_preset", "soup"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "linearize": "lizardlm.train.linearize",
    "RunDir": "lizardlm.train.rundir",
    "load_run": "lizardlm.train.rundir",
    "PRESETS": "lizardlm.train.settings",
    "TrainSettings": "lizardlm.train.settings",
    "settings_from_preset": "lizardlm.train.settings",
    "soup": "lizardlm.train.soup",
})
