import sys

from capinfer.cli import main

sys.exit(main())
