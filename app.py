"""``python app.py`` serves Switchboard (UI at /, API at /v1), the same as ``switchboard serve``."""

import sys

from bot.cli import main

if __name__ == "__main__":
    sys.argv[1:1] = ["serve"]
    main()
