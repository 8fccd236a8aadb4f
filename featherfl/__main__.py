import sys

from featherfl.cli import main

sys.exit(main())
