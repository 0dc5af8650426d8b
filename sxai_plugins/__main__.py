import sys

from sxai_plugins.cli.main import main

sys.exit(main())
