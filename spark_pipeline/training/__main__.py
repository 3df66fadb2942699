import sys

from spark_pipeline.training.loop import main

sys.exit(main())
