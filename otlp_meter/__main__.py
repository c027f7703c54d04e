import sys

from otlp_meter.cli import main

sys.exit(main())
