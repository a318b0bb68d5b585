import sys

from deployer.entry import main

sys.exit(main())
