"""`python -m croptune.cli`, as `accelerate launch -m croptune.cli` runs it."""

from croptune.cli.app import main

if __name__ == "__main__":
    main()
