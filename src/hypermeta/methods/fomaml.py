"""First-order MAML (Finn et al. 2017, §5.2): MAML with the inner gradients detached, so
the meta-gradient is the query loss's gradient at the adapted weights."""

from __future__ import annotations

from hypermeta.methods.gradient.learner import GradientMetaConfig, register_learner
from hypermeta.methods.maml import MAML

register_learner(
    "fomaml", MAML, GradientMetaConfig, "first-order MAML (Finn 2017)", first_order=True
)
