"""``python -m clipfast`` runs the command-line interface."""

from clipfast.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
