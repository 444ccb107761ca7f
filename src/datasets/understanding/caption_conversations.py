"""Puffin's ``CaptionDatasetUnd`` (imported from ``src.datasets.understanding.caption_datasets``, where
Puffin's configs find it), on Puffin's base (``src.datasets.base_datasets``): samples hold an xtuner
``conversation`` for the model to tokenize, no ids.

Records ``{"image", "annotation"}``; the caption is the ``cap_source`` key of the annotation json.
- ``'image2text'``: ``pixel_values`` (shaped by ``image_process``) and the conversation ``<image>``,
  a drawn one of ``caption_prompts`` (followed by the camera caption of the same annotation under
  ``cap_folder_cam`` where given: ``type='image2text_cross_view'``), answered by the caption;
- ``'text2text'``: a drawn prompt and the caption, answered by the reasoning of the same annotation
  under ``cap_folder_cot`` (inside ``<think>...</think>``).
Batches: ``CollateFuncUnd(data_type=...)``.
"""
from __future__ import annotations

from mmengine.registry import DATASETS

from src.datasets.base_datasets import CaptionDataset, thinking_of
from src.datasets.errors import SampleError
from src.datasets.utils import DEFAULT_IMAGE_TOKEN

DATA_TYPES = ('image2text', 'text2text')


@DATASETS.register_module()
class CaptionDatasetUnd(CaptionDataset):
    """Puffin's keywords: ``caption_prompts``, ``data_type``, ``cap_folder_cot``, ``cap_folder_cam``,
    then the base's."""

    def __init__(self, caption_prompts, data_type='image2text', cap_folder_cot=None, cap_folder_cam=None, **kwargs):
        if data_type not in DATA_TYPES:
            raise ValueError(f'CaptionDatasetUnd: data_type={data_type!r}, one of {DATA_TYPES}')
        if data_type == 'text2text' and cap_folder_cot is None:
            raise ValueError("CaptionDatasetUnd: data_type='text2text' answers with cap_folder_cot's reasoning; "
                             'give cap_folder_cot')
        if not caption_prompts:
            raise ValueError('CaptionDatasetUnd: caption_prompts is empty')
        self.caption_prompts, self.data_type = list(caption_prompts), data_type
        self.cap_folder_cot, self.cap_folder_cam = cap_folder_cot, cap_folder_cam
        super().__init__(**kwargs)

    @property
    def decodes_images(self) -> bool:
        return self.data_type == 'image2text' and super().decodes_images

    def prepare_data(self, idx, rng=None, prompt_ids=None) -> dict:
        rng = self.sample_rng(idx) if rng is None else rng
        record = self.index[idx]
        try:
            caption = self.caption_of(record)
            prompt = rng.choice(self.caption_prompts)
            if self.data_type == 'text2text':
                reasoning = thinking_of(self.caption_in(self.cap_folder_cot, self.annotation_of(record)))
                return dict(conversation=[{'input': f'{prompt} {caption}', 'output': reasoning}], type='text2text')
            data = dict(pixel_values=self.load_pixels(record[self.image_key], rng))
            if self.cap_folder_cam is not None:
                camera = self.caption_in(self.cap_folder_cam, self.annotation_of(record))
                data.update(conversation=[{'input': f'{DEFAULT_IMAGE_TOKEN}\n{prompt} {camera}', 'output': caption}],
                            type='image2text_cross_view')
            else:
                data.update(conversation=[{'input': f'{DEFAULT_IMAGE_TOKEN}\n{prompt}', 'output': caption}],
                            type='image2text')
            return data
        except SampleError as err:
            raise SampleError(err.reason, f'{self.data_path} sample #{idx} (image {record.get(self.image_key)!r}): '
                                          f'{err}') from err
