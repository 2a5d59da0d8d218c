"""Pipeline stage: download (see dvc.yaml). Usage: python pipeline/download.py"""

import sys

from hypermeta.cli import run_stage

run_stage(["download", *sys.argv[1:]])
