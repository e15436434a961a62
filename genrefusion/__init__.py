"""genrefusion's installed command (``genrefusion <subcommand> …``); the library lives in the sibling packages."""
