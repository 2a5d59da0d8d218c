"""Pipeline stage: evaluate one experiment (see dvc.yaml).

Usage: python pipeline/evaluate.py EXPERIMENT
"""

import sys

from hypermeta.cli import run_stage

run_stage(["evaluate", *sys.argv[1:]])
