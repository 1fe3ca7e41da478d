"""``python -m benchmarks.han COMMAND ...``: the Han benchmark's command line (:mod:`benchmarks.han.cli`)."""

from benchmarks.han.cli import main

if __name__ == "__main__":
    main()
