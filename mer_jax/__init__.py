"""mer_jax: facial micro-expression recognition on CASME II with JAX/Flax."""

__version__ = "0.1.0"
