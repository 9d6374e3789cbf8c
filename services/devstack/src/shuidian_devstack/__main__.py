"""`python -m shuidian_devstack run`: start the whole platform with the demo estate."""

import sys

from shuidian_devstack.run import main

if len(sys.argv) < 2 or sys.argv[1] != "run":
    sys.exit("usage: python -m shuidian_devstack run")
main()
