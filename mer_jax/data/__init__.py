"""CASME II: coding sheet, phases, splits, preprocessing and the synthetic stand-in."""
