import sys

from spark_pipeline.cli import main

sys.exit(main())
