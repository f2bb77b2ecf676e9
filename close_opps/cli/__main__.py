"""``python -m close_opps.cli``: the same as the ``close-opps`` script."""

from close_opps.cli import main

if __name__ == "__main__":
    main()
