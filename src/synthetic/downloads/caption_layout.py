"""A prepared dataset in any upstream config's layout, for datasets without a prepare tool here."""
from __future__ import annotations

import random
from pathlib import Path

from src.synthetic.downloads.parts import MOSTLY_JPEG, draw_captions, hex_id, json_bytes, picture, write_file


def make_caption_layout(workdir, data_path: str, image_folder: str, cap_source: str, cap_folder: str | None = None,
                        n: int = 6, seed: int = 0) -> dict[str, str]:
    """A prepared dataset in any upstream config's layout, for configs of datasets without a tool
    here (VGT's megalith-10m, text-to-image-2M, ...): ``n`` images under ``image_folder`` and the
    index ``data_path`` (paths relative to ``workdir``). With ``cap_folder`` the records are
    ``{"image", "annotation"}`` and each caption is the ``cap_source`` key of a json file there;
    without, the records hold the caption inline under ``cap_source``. Returns image -> caption."""
    rng = random.Random(f'{data_path}-{seed}')
    workdir = Path(workdir)
    samples, records = {}, []
    for i, caption in enumerate(draw_captions(rng, n)):
        image = picture(rng, i, MOSTLY_JPEG)
        name = f'{hex_id(rng, 8)}{image.ext}'
        write_file(workdir / image_folder / name, image.data)
        samples[name] = caption
        if cap_folder is None:
            records.append({'image': name, cap_source: caption})
        else:
            annotation = f'{Path(name).stem}.json'
            write_file(workdir / cap_folder / annotation, json_bytes({cap_source: caption, 'other': f'not {caption}'}))
            records.append({'image': name, 'annotation': annotation})
    write_file(workdir / data_path, json_bytes(records))
    return samples
