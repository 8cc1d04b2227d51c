import sys

from jobkit.cli import main

sys.exit(main())
