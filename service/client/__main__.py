"""``python -m service.client``: the ``jobpool`` command."""

import sys

from service.client.cli import main

sys.exit(main())
