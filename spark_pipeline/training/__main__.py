import os
import sys

from spark_pipeline.training.lifeline import tie_to_torchrun

# First, before the imports that take seconds: a worker whose torchrun dies is stopped.
tie_to_torchrun()

from spark_pipeline.training.loop import main  # noqa: E402

code = main()
# Everything is on disk and reported by now. Leave without interpreter teardown: destroying
# a DDP reducer at exit can join gloo's worker thread while that thread waits for the GIL
# the exiting main thread holds (seen as a hang of one rank after a finished run).
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
