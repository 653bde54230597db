"""Statistics over many runs: a study's runs gathered, summarised, compared and written as
tables and figures (the intervals themselves are mer_jax.metrics)."""
