"""The installed environment imports what the tools need, together: xtuner (configs), diffusers
(latents; through a bitsandbytes that works with this torch) and img2dataset (URL downloads)."""
import os
import subprocess
import sys


def test_xtuner_diffusers_and_img2dataset_import_in_one_process():
    code = ('import xtuner.dataset, diffusers, img2dataset; '
            'from diffusers import AutoencoderDC, AutoencoderKL; print(diffusers.__version__)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE='1'))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == '0.33.1'
