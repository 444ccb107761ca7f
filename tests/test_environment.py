"""The installed environment: xtuner (configs), diffusers (latents) and img2dataset (URL downloads)
import together, quietly, and without bitsandbytes, which nothing here needs; the core's declared
dependencies leave the optional stacks to their extras."""
import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from noise import noise

REPO = Path(__file__).resolve().parents[1]


def test_xtuner_diffusers_and_img2dataset_import_in_one_process_without_noise():
    code = ('import xtuner.dataset, diffusers, img2dataset; '
            'from diffusers import AutoencoderDC, AutoencoderKL; print(diffusers.__version__)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE='1'))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == '0.33.1' and noise(result.stderr) == []
    assert importlib.util.find_spec('bitsandbytes') is None  # xtuner's pin fails with this torch


def test_the_core_leaves_the_optional_stacks_to_extras():
    project = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
    core = ' '.join(project['dependencies'])
    for package, extra in (('diffusers', 'latents'), ('boto3', 's3'), ('img2dataset', 'download'),
                           ('matplotlib', 'report'), ('pyspark', 'spark'), ('numba', None), ('pandas', None)):
        assert package not in core, package
        if extra:
            assert any(package in requirement for requirement in project['optional-dependencies'][extra]), package


def test_the_spark_test_has_what_it_needs_where_make_installs_it():
    """make installs the spark extra always, and Java as root (as CI runs): there the pyspark test runs,
    never skipped."""
    import shutil
    assert importlib.util.find_spec('pyspark') is not None  # the 'spark' extra
    if os.geteuid() == 0:
        assert shutil.which('java') is not None, 'make installs default-jre-headless as root'


def test_the_compiled_pixel_loop_is_built_where_make_installs_a_compiler():
    """make installs gcc and Python's headers as root (as CI runs), and the install builds
    src/datasets/sample/_planes.c; without a compiler the numpy loop runs (the same floats, slower)."""
    import shutil
    import sysconfig
    from src.datasets.sample import planes
    headers = Path(sysconfig.get_paths()['include'], 'Python.h').exists()
    if os.geteuid() == 0 or (shutil.which('cc') and headers):
        assert planes._compiled_normalise is not None, 'make builds src/datasets/sample/_planes.c'
