"""Text-to-image: the FLUX.1 pipeline around the diffusion transformer of `engine.models.flux`.

`diffusers` supplies the flow-match scheduler and the VAE, `transformers` the CLIP and T5 text
encoders; Tandem owns the transformer and its split into stages (`stages.py`). Nothing here is
imported by the text engine: diffusers is needed only where images are made.
"""
