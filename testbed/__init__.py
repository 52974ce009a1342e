"""megbed testbed: the split latent-diffusion runtime, the ES / UE / orchestrator nodes, campaigns and the CLI."""

__version__ = "0.1.0"
