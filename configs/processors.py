# The prompt template, tokenizer and image size shared by the dataset configs (upstream style).
#
# The tokenizer is loaded from the hub name below. To use a local copy (a machine without network,
# or the synthetic tokenizer of src/synthetic/tokenizer.py), either edit the path here, or override
# it after loading the config:
#     cfg = Config.fromfile('configs/datasets/<name>.py')
#     cfg.train_dataloader.dataset.tokenizer.pretrained_model_name_or_path = '/path/to/tokenizer'
# (Pure-python configs are parsed, not run: top-level calls such as os.environ.get are not allowed.)
#
# No trust_remote_code: this tokenizer is a standard one, and nothing a download holds should run.
# A model whose tokenizer needs code of its own is your explicit choice: add trust_remote_code=True
# to your copy of this dict, knowing that the model folder's Python then runs in every worker.
from transformers import AutoTokenizer

prompt_template = dict(
    IMG_START_TOKEN='<img>',
    IMG_END_TOKEN='</img>',
    IMG_CONTEXT_TOKEN='<IMG_CONTEXT>',
    SYSTEM='<|im_start|>system\n{system}<|im_end|>\n',
    INSTRUCTION='<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n',
    SUFFIX='<|im_end|>',
    SUFFIX_AS_EOS=True,
    SEP='\n',
    STOP_WORDS=['<|im_end|>'],
    GENERATION='Generate an image: {input}',
    CFG='Generate an image.',
)

tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path='OpenGVLab/InternVL3-2B',
    padding_side='right',
)

image_size = 512
pad_index = 0
