"""Test fixtures that tests, benchmarks and scripts share -- never measurements, never imported by a node.

* :mod:`megbed.testing.random_weight_models`: SD-1.5- and SDXL-shaped diffusers folders with random weights (no downloads);
* :mod:`megbed.testing.parametric_campaign`: a campaign dataset from a parametric model of the paper's setting (policy
  tests and benchmarks);
* :mod:`megbed.testing.ground_truth_run`: a whole run directory with closed-form costs, for checking the report;
* :mod:`megbed.testing.node_fuzz`: random and hostile messages every node must refuse (``python -m megbed.testing.node_fuzz``).
* :mod:`megbed.testing.live_nodes`: free ports, start-up wait, RSS and a never-reading flooder for node processes
  (the node tests and ``scripts/attack_nodes.py``).

The product imports this package only where a user asks for a fixture on purpose; ``tests/test_import_direction.py``
checks that nothing else does.
"""
