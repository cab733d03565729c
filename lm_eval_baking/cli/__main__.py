"""`python -m lm_eval_baking.cli ...`, e.g. under `accelerate launch -m lm_eval_baking.cli bake ...`."""

import sys

from . import main

sys.exit(main())
