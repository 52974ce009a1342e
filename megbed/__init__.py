"""megbed: a hardware-in-the-loop testbed for mobile edge generation (split latent diffusion).

One import namespace over the repository's top-level folders, which install as its subpackages::

    megbed.testbed            runtime, nodes, campaigns, policy, CLI
    megbed.channel_emu        link-level channel emulator and broker
    megbed.measurements       power probes, sampler, dataset schema / writer / reader
    megbed.analysis           loaders, cost-model fits, figures, the HTML report
    megbed.firmware_profiles  per-board operating profiles
    megbed.megwire            frames and ZeroMQ plumbing
    megbed.testing            test fixtures shared by tests, benchmarks and scripts

An installed megbed (wheel or editable) has them inside this package. A source checkout used without installing
(``PYTHONPATH=<checkout>``, as local campaign nodes are started) finds them beside this folder: ``__path__`` is
extended with the checkout root, and only there (a checkout is recognised by its pyproject.toml and folders).
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"
SUBPACKAGES = ("testbed", "channel_emu", "measurements", "analysis", "firmware_profiles", "megwire", "testing")

_checkout = Path(__file__).resolve().parents[1]
if (_checkout / "pyproject.toml").is_file() and all((_checkout / p / "__init__.py").is_file()
                                                     for p in ("testbed", "measurements")):
    __path__.append(str(_checkout))  # noqa: F821 - a package's __path__ is defined by the import system
