"""`python -m sandrun` runs the same CLI as the `sandrun` console script."""

from sandrun.cli import main

if __name__ == "__main__":
    main()
