"""Names of benchmark result files: each ends in the slug of the device it ran on."""

from __future__ import annotations

import re


def device_slug(name: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
