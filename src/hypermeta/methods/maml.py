"""MAML (Finn et al. 2017): adapt the initial weights to each task by a few SGD steps of
one scalar step size on its support set, and meta-learn them through the adaptation with
the true second-order meta-gradient. Everything it does is the shared machinery's
default (gradient/learner.py); this file names it."""

from __future__ import annotations

from hypermeta.methods.gradient.learner import (
    GradientMetaConfig,
    GradientMetaLearner,
    register_learner,
)


class MAML(GradientMetaLearner):
    """One scalar inner learning rate; second order unless `first_order`."""


register_learner("maml", MAML, GradientMetaConfig, "MAML, second-order meta-gradient (Finn 2017)")
