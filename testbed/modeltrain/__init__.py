"""Training of megbed's embedded default model (a small text-to-image LDM on procedural shape scenes).

Phases, each seeded and resumable from its last checkpoint (safetensors + JSON, never pickle):

1. ``tokenizer``: CLIP-format ``vocab.json`` / ``merges.txt`` for the grammar's words (``tokenizer``).
2. ``vae``: an ``AutoencoderKL`` (downsampling 8, 4 latent channels) on random crops of rendered scenes
   (``vae_train``).
3. ``latents``: a fixed set of training scenes encoded once by the trained VAE (``data``).
4. ``unet``: ``CLIPTextModel`` + ``UNet2DConditionModel`` (the text encoder held at its initialisation for the first
   steps, then trained with the U-Net at a lower rate), v-prediction on a zero-terminal-SNR schedule,
   classifier-free guidance dropout, min-SNR weighting, EMA (``unet_train``).
5. ``export``: a standard diffusers folder for ``StableDiffusionPipeline.from_pretrained`` (``export``).

``python -m megbed.testbed.modeltrain --out DIR`` (or ``megbed model train``) runs them in order (``runner``);
the recipe and the architectures live in ``config``.
"""
