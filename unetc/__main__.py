"""``python -m unetc`` = the ``unetc`` console script."""
import sys

from .cli import main

sys.exit(main())
