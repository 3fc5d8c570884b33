import sys

from stormvl.cli import main

sys.exit(main())
