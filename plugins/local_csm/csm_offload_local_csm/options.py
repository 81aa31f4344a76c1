"""How the engine loads and runs CSM: one torch-free settings class for every host.

It is the `local_csm` target's settings type, the RunPod worker's engine settings and what
`csm-offload serve` builds from its options, so a new knob is added in one place.
"""

from __future__ import annotations

import attrs

DEFAULT_MODEL = "sesame/csm-1b"


@attrs.frozen
class EngineOptions:
    """Where the weights come from and how they run. `device`/`dtype` "auto" picks for you."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "auto"
    #: A static KV cache (fixed shapes, so `torch.compile` does not recompile per length).
    static_cache: bool = False
    #: `torch.compile` the backbone and depth decoder (GPU hosts; the first batch is slow).
    compile: bool = False


DEFAULT_OPTIONS = EngineOptions()
