"""The one compiled part: ``src/datasets/_planes.c``, uint8 pixels -> float planes in one pass
(``src.datasets.image_io._normalise``; 0.5-0.9 ms a sample less than numpy, bench/RESULTS.md). It is
optional: where no C compiler is found the install goes on, and image_io uses numpy, with the same
floats. Everything else is configured in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension('src.datasets._planes', ['src/datasets/_planes.c'], optional=True)])
