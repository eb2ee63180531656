import sys

from nercc.cli import main

sys.exit(main())
