import sys

from tandem.runner.main import main

sys.exit(main())
