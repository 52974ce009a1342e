"""The package layout pyproject.toml cannot express in a static table: each top-level folder installs as a
subpackage of ``megbed`` (``testbed/`` -> ``megbed.testbed``), with all of its own subpackages."""

from __future__ import annotations

from setuptools import find_namespace_packages, setup

FOLDERS = ("testbed", "channel_emu", "measurements", "analysis", "firmware_profiles", "megwire", "testing")

packages = ["megbed"]
package_dir = {"megbed": "megbed"}
for folder in FOLDERS:
    package_dir[f"megbed.{folder}"] = folder
    # namespace-style discovery, as pyproject's packages.find did: data folders without __init__.py
    # (testbed/assets/default_model/..., firmware_profiles/profiles) are packages whose files package-data ships
    subs = find_namespace_packages(folder, exclude=["*__pycache__*"])
    packages += [f"megbed.{folder}"] + [f"megbed.{folder}.{sub}" for sub in subs]

setup(packages=packages, package_dir=package_dir)
