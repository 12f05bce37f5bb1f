import sys

from fsdtrain.cli import main

sys.exit(main())
