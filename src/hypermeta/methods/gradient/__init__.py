"""What the gradient-based meta-learners (maml.py, fomaml.py, mamlpp.py, metasgd.py,
reptile.py beside this package) share, one concern a module:

- `inner_loop`: the algorithm as pure functions of fast weights: adapt to a task's
  support set with a given loss and update rule; the meta-gradient of an outer loss.
- `tasks`: how a per-task function runs over a meta-batch (vmap, a loop, or the loop on
  worker threads), for any learner.
- `learner`: `GradientMetaLearner`, the few-shot interface on top of them (the shared
  `model:` section, the target network per data kind, batch-norm regimes at meta-test,
  the outer step), and `register_learner`. A method file says only what differs.
"""
