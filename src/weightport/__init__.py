"""weightport: a self-hosted registry and download gateway for fine-tuned model weights."""

__version__ = "0.1.0"
