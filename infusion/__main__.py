"""`python -m infusion ...`: the headless runner (see infusion/cli)."""
import sys

from .cli.main import main

sys.exit(main())
