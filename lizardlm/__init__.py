"""lizardlm: linearize pretrained Llama-family LLMs into Lizard models.

    import lizardlm
    model = lizardlm.convert(teacher, lizardlm.LizardConfig(window_size=64))
"""

from lizardlm.cache import LizardCache
from lizardlm.config import LizardConfig
from lizardlm.convert import convert
from lizardlm.loading import load, load_any
from lizardlm.models import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
__all__ = ["LizardCache", "LizardConfig", "__version__", "convert", "load", "load_any", "load_teacher"]


def load_teacher(name_or_path: str, **kwargs):
    """``(model, tokenizer)`` of a teacher: see :func:`lizardlm.teachers.load_teacher`."""
    from lizardlm.teachers import load_teacher as _load_teacher

    return _load_teacher(name_or_path, **kwargs)
