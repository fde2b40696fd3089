"""faclip: fine-tune a Persian CLIP text encoder against a frozen vision encoder, as a DVC pipeline."""

__version__ = "0.1.0"
