"""The Spatia world model as pure networks: config presets, the causal video VAE, the DiT with its control branch,
the flow-matching sampler, LoRA, checkpoints and conversion of the official release.

Nothing here imports memory, server or pipeline code. Submodules are imported on use (`from engine.model.dit
import SpatiaDiT`); this package only re-exports the small config entry point so `import engine.model` stays cheap.
"""

from engine.model.configs import ModelConfig

__all__ = ["ModelConfig"]
