"""Remote code of a model saved by lizardlm, copied next to its config.json.

``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` (and ``lm_eval --model hf
--model_args pretrained=DIR,trust_remote_code=True``) load the model through this file without
``import lizardlm``; the classes themselves come from the lizardlm package: ``pip install lizardlm``.
"""

try:
    import lizardlm.models.modeling as _modeling
except ImportError as err:
    raise ImportError(f"this model was saved by lizardlm, which is not installed ({err}): pip install lizardlm") from err

# Subclasses defined here, so that saving a model loaded through this file copies this file again.
for _arch in _modeling.ARCHITECTURES.values():
    for _cls in (_arch.config_class, _arch.model_class):
        globals()[_cls.__name__] = type(_cls.__name__, (_cls,), {"__module__": __name__})
