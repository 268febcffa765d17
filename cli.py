"""Launcher: ``python cli.py ...`` runs the ``clnfdiag`` command from a checkout."""
from clnfdiag.cli import main

if __name__ == "__main__":
    main(prog_name="clnfdiag")
