"""The backbone: layers (einsum, dense, norm, attention, adaLN blocks, embeddings), transformer towers and
the size ladder. It knows no objective.

Array names end in their shape, one letter per dimension, one meaning per letter across the package:

  B  batch                               H, W  image height, width
  L  sequence length (tokens, patches)   C     colour channels (3)
  M  attended length (keys, context)     P     values per patch (patch x patch x C)
  D  model width (residual stream)       T     text tokens
  F  MLP hidden width                    V     vocabulary entries (text tokens, palette colours)
  A  attention heads                     E     an embedding outside the residual stream (CLIP's joint
  Q  width per attention head                  space, a diffusion condition)
  Y  layers (stacked blocks)             K     classes; J the classes kept of them
  Z  diffusion timesteps of a schedule   S     DDIM sampling steps
  R  draws per image (diffusion-classifier trials, iGPT completions)
  U  class prompts (classes x templates)
  N  examples or pixels in a flat list (probe and palette fits)

A digit is a literal size (``params_B6D``: six adaLN outputs). Parameters carry logical axis names, one per
kind of dimension (see scaling.sharding).
"""
