"""`python -m prune_recover.eval MODEL [overrides]`: evaluate any model, no training (`jobs/evaluate_model.py`)."""

from prune_recover.jobs.evaluate_model import main

if __name__ == "__main__":
    main()
