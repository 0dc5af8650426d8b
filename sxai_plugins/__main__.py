import sys

from sxai_plugins.cli import main

sys.exit(main())
