import sys

from pulsetrain.cli import main

sys.exit(main())
