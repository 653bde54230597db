"""What every layer may use: user errors, the command-line convention, enums, cache paths,
the device mesh and malloc settings, a progress bar, and the speed harnesses' timing."""
