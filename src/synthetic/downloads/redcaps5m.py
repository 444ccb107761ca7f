"""redcaps5m's download: tars of per-subreddit image and json pairs, and its index."""
from __future__ import annotations

import random
from pathlib import Path

from src.synthetic.downloads.parts import (Download, Expected, JPEG_ONLY, MOSTLY_JPEG, Picture, draw_captions,
                                           hex_id, hub_extras, json_bytes, picture, split_chunks, write_file)


def make_redcaps5m(root, n: int = 12, seed: int = 0, faults: bool = True, hostile: bool = False,
                   truncated_tar: bool = False, shards: int = 3) -> Expected:
    """``raw/<k>.tar`` of ``<subreddit>/<id>.<ext>`` + ``<subreddit>/<id>.json`` pairs (json:
    ``re_caption`` = the expected caption, ``caption`` = the Reddit title, in ``other_captions``,
    subreddit, id, url), and ``redcaps5m_data.json`` (``{"image", "annotation"}`` relative to
    ``raw/``).

    Faults: an index entry whose image is missing (its caption json is there: 'prepare', 'no-image').
    """
    rng = random.Random(f'redcaps5m-{seed}')
    expected = Expected('redcaps5m', Path(root), image_folder='raw', data_path='redcaps5m_data.json',
                        cap_folder='raw')
    download = Download(expected, expected.root / 'raw')
    captions = iter(draw_captions(rng, 2 * (n + 3)))
    subreddits = ['itookapicture', 'earthporn', 'foodporn', 'cats', 'architecture']
    samples, pending_faults = [], []  # samples: (image path, annotation path, members)

    def sample(image: Picture | None, usable: bool = True) -> tuple[str, str, list[tuple[str, bytes]]]:
        subreddit, ident = rng.choice(subreddits), hex_id(rng, 6)
        image_path = f'{subreddit}/{ident}{image.ext if image else ".jpg"}'
        recaption, title = next(captions), f'[OC] {next(captions)}'
        meta = {'re_caption': recaption, 'caption': title, 'subreddit': subreddit, 'id': ident,
                'url': f'https://i.redd.it/{ident}.jpg'}
        members = [(f'{subreddit}/{ident}.json', json_bytes(meta))]
        if image is not None:
            members.insert(0, (image_path, image.data))
        if usable:
            expected.samples[image_path] = recaption
            expected.other_captions.setdefault('caption', {})[image_path] = title
        return image_path, f'{subreddit}/{ident}.json', members

    for i in range(n):
        samples.append(sample(picture(rng, i, MOSTLY_JPEG)))
    if faults:
        missing = sample(None, usable=False)
        pending_faults.append(('entry-without-image', 'redcaps5m_data.json', 'prepare', 'no-image',
                               missing[0]))
        samples.insert(rng.randrange(len(samples) + 1), missing)
    for k, chunk in enumerate(split_chunks(samples, shards)):
        download.tar(f'raw/{k:05d}.tar', [m for _, _, members in chunk for m in members],
                     hostile and k == 0)
    if truncated_tar:
        kept, cut = sample(picture(rng, 0, JPEG_ONLY)), sample(picture(rng, 1, JPEG_ONLY), usable=False)
        download.truncated_tar('raw/99999.tar', kept[2] + cut[2][::-1], cut[0])
        samples += [kept, cut]
    for fault in pending_faults:
        download.fault(*fault)
    index = [{'image': image, 'annotation': annotation} for image, annotation, _ in samples]
    write_file(expected.root / 'redcaps5m_data.json', json_bytes(index))
    hub_extras(expected.root)
    return expected
