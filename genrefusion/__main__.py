import sys

from genrefusion.cli import main

sys.exit(main())
