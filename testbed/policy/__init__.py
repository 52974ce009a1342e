"""The MEG policy from measured costs: a gymnasium CMDP on campaign datasets, CVPO, PPO-Lagrangian, baselines.

Entry points (see each module):

* :func:`testbed.policy.env.make_meg_env` -- the CMDP on a campaign run directory (``info["cost"]`` per step).
* :func:`testbed.policy.api.train_policy` -- train ``cvpo`` or ``ppo-lag`` with checkpoints, log and export.
* :func:`testbed.policy.evaluate.evaluate` -- run and summarise any policy; :mod:`testbed.policy.baselines` for
  the oracle and fixed schemes; :class:`testbed.policy.checkpoint.LearnedPolicy` loads a trained one.
* :mod:`testbed.policy.live` -- :class:`LiveTestbed`, the interface a live testbed binding implements.
* :func:`testbed.policy.quick.quick_train_and_evaluate` -- the short run for ``make run``.

Modules are imported lazily by their users; importing this package costs nothing.
"""
