"""``python -m pyro_vae.cli`` (and ``torchrun ... -m pyro_vae.cli``): the ``pyro-vae`` command."""

import sys

from . import main

sys.exit(main())
