"""Pipeline stage: visualize one experiment (see dvc.yaml).

Usage: python pipeline/visualize.py EXPERIMENT
"""

import sys

from hypermeta.cli import run_stage

run_stage(["visualize", *sys.argv[1:]])
