"""Pipeline stage: report (see dvc.yaml). Usage: python pipeline/report.py"""

import sys

from hypermeta.cli import run_stage

run_stage(["report", *sys.argv[1:]])
