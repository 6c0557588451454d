import sys

from lizardlm.cli import main

sys.exit(main())
