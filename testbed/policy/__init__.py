"""The MEG policy from measured costs: a gymnasium CMDP on campaign datasets, CVPO, PPO-Lagrangian, baselines.

Entry points (see each module):

* :func:`megbed.testbed.policy.env.make_meg_env` -- the CMDP on a campaign run directory (``info["cost"]`` per step).
* :func:`megbed.testbed.policy.api.train_policy` -- train ``cvpo`` or ``ppo-lag`` with checkpoints, log and export.
* :func:`megbed.testbed.policy.evaluate.evaluate` -- run and summarise any policy; :mod:`megbed.testbed.policy.baselines` for
  the oracle and fixed schemes; :class:`megbed.testbed.policy.checkpoint.LearnedPolicy` loads a trained one.
* :mod:`megbed.testbed.policy.live` -- :class:`LiveTestbed`, the interface a live testbed binding implements.
* :func:`megbed.testbed.policy.quick.quick_train_and_evaluate` -- the short run for ``make run``.

Modules are imported lazily by their users; importing this package costs nothing.
"""
