import gc
import sys

gc.disable()  # the imports allocate only what lives on (see cockpit/app/__init__.py)
from cockpit.cli import main  # noqa: E402

gc.enable()
sys.exit(main())
