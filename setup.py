"""Packages of the colenv distribution (everything else is in pyproject.toml).

The default configs live in the top-level ``config/`` folder, where a clone edits them; the
wheel carries the same files as the package data ``colenv._config``, which
``colenv.resources.config_dir`` finds in an installed copy. pyproject.toml cannot map a folder
outside the package tree onto a package name next to automatic package discovery, hence this
file.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["colenv*", "trainers*"]), "colenv._config"],
    package_dir={"colenv._config": "config"},
)
