"""`python -m prune_recover.deploy`: deployment metrics of causal LMs (see `prune_recover.evaluation.deploy`)."""

from prune_recover.evaluation.deploy import main

if __name__ == "__main__":
    main()
