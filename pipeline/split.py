"""Pipeline stage: split (see dvc.yaml). Usage: python pipeline/split.py"""

import sys

from hypermeta.cli import run_stage

run_stage(["split", *sys.argv[1:]])
