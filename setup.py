"""The one compiled part: ``src/datasets/sample/_planes.c``, uint8 pixels -> float planes in one pass
(``src.datasets.sample.planes.float_planes``; faster than numpy's passes: bench/RESULTS.md, "Float planes"). It is
optional: where no C compiler is found the install goes on, and planes.py uses numpy, with the same
floats. Everything else is configured in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension('src.datasets.sample._planes', ['src/datasets/sample/_planes.c'], optional=True)])
