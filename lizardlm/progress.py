"""Progress bars: tqdm, honouring ``TQDM_DISABLE`` (and tqdm's other ``TQDM_*`` variables)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress(iterable: Iterable | None = None, *, enable: bool = True, **kwargs: Any):
    """A tqdm bar; ``enable=False`` hides it, else the environment decides (an explicit ``disable=``
    would override ``TQDM_DISABLE``, so none is passed)."""
    from tqdm.auto import tqdm

    if not enable:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
