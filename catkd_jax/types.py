"""The pytree shapes the package passes around, named once."""

from __future__ import annotations

from typing import Any

import jax

Variables = dict[str, Any]  # a network's {"params": ..., "batch_stats": ...}, or one of them
Metrics = dict[str, jax.Array]  # per-step or per-epoch sums, on device
