"""`python -m prune_recover.plan [--gpus N] [--gpu-memory GiB] [overrides]`: will a recipe fit its GPUs?"""

import sys

from prune_recover.jobs.memory_plan import main

if __name__ == "__main__":
    sys.exit(main())
