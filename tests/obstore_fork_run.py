"""In a process of its own (``tests/test_obstore_workers.py`` runs it under a timeout: a hang is a
failure, not a stuck suite): a dataset over a bucket reads in the parent (boto3), then DataLoader
workers forked after that read every sample (obstore, made in each worker). Writes, per sample,
the digests of its files as each process read them and the client that read them."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.datasets.storage.obstore_client import worker_store  # noqa: E402
from src.datasets.text2image.caption_datasets import CaptionDataset  # noqa: E402


class Files(Dataset):
    """A sample's files as its dataset reads them, read a batch at a time (the batch prefetch)."""

    def __init__(self, dataset: CaptionDataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        return self.__getitems__([idx])[0]

    def __getitems__(self, indices):
        samples = self.dataset.__getitems__(indices)  # every file of the batch fetched at once
        folder = getattr(self.dataset.image_files, 'store', self.dataset.image_files)  # tar members: their store
        client = 'obstore' if worker_store(folder.cluster, folder.bucket) is not None else 'boto3'
        return [dict(idx=int(idx), image=hashlib.sha256(self.dataset.read_image(sample['image_file'])).hexdigest(),
                     pixels=float(sample['pixel_values'].double().sum()), client=client, pid=os.getpid())
                for idx, sample in zip(indices, samples)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', required=True)
    parser.add_argument('--tokenizer', required=True)
    parser.add_argument('--dataset', required=True, help='the keywords of CaptionDataset, as JSON')
    parser.add_argument('--without-obstore', action='store_true', help='as where obstore is not installed')
    args = parser.parse_args()
    if args.without_obstore:
        sys.modules['obstore'] = None  # its import fails, as where it is not installed
    from mmengine.config import Config
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    template = Config.fromfile(str(Path(__file__).resolve().parents[1] / 'configs' / 'processors.py')).prompt_template
    dataset = Files(CaptionDataset(tokenizer=tokenizer, prompt_template=template.to_dict(), **json.loads(args.dataset)))
    parent = [dataset[0]]  # the parent's read, before the fork
    loader = DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context='fork',
                        collate_fn=lambda batch: batch)
    workers = [sample for batch in loader for sample in batch]
    Path(args.out).write_text(json.dumps(dict(parent=parent, workers=workers)))


if __name__ == '__main__':
    main()
