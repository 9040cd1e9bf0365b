"""synth: the standalone multi-agent synthesizer service. Never imports JAX."""
__version__ = "0.1.0"
