"""oresearcher: the trainer package. Importing it must not import JAX (the synthesizer imports the protocol)."""
__version__ = "0.1.0"
