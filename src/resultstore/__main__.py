"""``python -m resultstore``: the ``resultstore`` command."""

from resultstore._cli import main

if __name__ == "__main__":
    main()
