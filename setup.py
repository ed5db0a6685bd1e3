"""The package list, which pyproject.toml alone cannot express.

``migrations/`` and ``sbatch/`` stay at the top of the repository
(docs/design.md) and are installed inside the package, as
``saia_ctl/migrations`` and ``saia_ctl/sbatch`` (``package-dir`` in
pyproject.toml). pyproject.toml can either discover packages or list them,
not both: this adds the two mapped ones to the discovered ``saia_ctl*``.
"""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["saia_ctl*"]), "saia_ctl.migrations", "saia_ctl.sbatch"])
