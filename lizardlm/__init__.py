"""lizardlm: linearize pretrained Llama-family LLMs into Lizard models.

    import lizardlm
    model = lizardlm.convert(teacher, lizardlm.LizardConfig(window_size=64))

Names are imported on first use (``import lizardlm`` and the CLI stay fast); using any model class
registers the Lizard types with transformers' ``Auto*`` classes.
"""

from lizardlm._lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["LizardCache", "LizardConfig", "__version__", "convert", "load", "load_any", "load_teacher",
           "register_auto_classes"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "LizardCache": "lizardlm.cache",
    "LizardConfig": "lizardlm.config",
    "convert": "lizardlm.convert",
    "load": "lizardlm.loading",
    "load_any": "lizardlm.loading",
    "load_teacher": "lizardlm.teachers",
    "register_auto_classes": "lizardlm.models.modeling",
})
