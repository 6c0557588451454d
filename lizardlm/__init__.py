"""lizardlm: linearize pretrained Llama-family LLMs into Lizard models.

    import lizardlm
    model = lizardlm.convert(teacher, lizardlm.LizardConfig(window_size=64))
"""

from lizardlm.cache import LizardCache
from lizardlm.config import LizardConfig
from lizardlm.convert import convert
from lizardlm.models import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
__all__ = ["LizardCache", "LizardConfig", "convert", "__version__"]
