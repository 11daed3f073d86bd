"""`python -m prune_recover.study`: run a pruning/recovery study and report it (see `prune_recover.jobs.study`)."""

from prune_recover.jobs.study import main

if __name__ == "__main__":
    main()
