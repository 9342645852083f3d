import sys

from featbench.app.cli import main

sys.exit(main())
