"""The CASME II TFDS dataset folder (see casme2_dataset_builder.py)."""
