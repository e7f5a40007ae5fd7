"""Diffusion (a DiT denoiser with DDIM sampling), one idea per module: ``schedule`` (noise schedule,
parametrisations, DDIM), ``model`` (the DiT), ``classifier`` (the diffusion classifier), ``objective``."""

from scaling.objectives.diffusion.objective import Diffusion, config_section

__all__ = ["Diffusion", "config_section"]
