import sys

from longcat.cli import main

sys.exit(main())
