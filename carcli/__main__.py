"""`python -m carcli` runs the command-line app."""

from carcli.cli import app

if __name__ == "__main__":
    app()
