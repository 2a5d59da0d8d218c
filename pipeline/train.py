"""Pipeline stage: train one experiment (see dvc.yaml).

Usage: python pipeline/train.py EXPERIMENT
"""

import sys

from hypermeta.cli import run_stage

run_stage(["train", *sys.argv[1:]])
