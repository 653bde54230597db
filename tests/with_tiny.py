"""`python tests/with_tiny.py MODULE ARGS...` runs `python -m MODULE ARGS...`
with the test architectures registered (tests/tiny.py), so that the commands
the end-to-end tests start can train `poolformer_test`."""
import runpy
import sys

import tiny   # this file's folder is sys.path[0]

tiny.register()
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
