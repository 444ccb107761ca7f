"""Every checkpoint the project's tools load is weights-only, whatever the environment (README
reliability table, "checkpoints"): ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` does not turn mmengine's
``--resume`` / ``load_from`` loaders back into pickle loads that run code."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

import src.engine  # noqa: F401 (what tools/train.py imports before the Runner)

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """A pickle that creates ``marker`` when it is loaded as a pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


@pytest.fixture
def forced_pickle(monkeypatch):
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


def planted(tmp_path) -> tuple[Path, Path]:
    marker, path = tmp_path / 'ran', tmp_path / 'iter_20.pth'
    torch.save({'meta': {}, 'state_dict': {'w': torch.zeros(1)}, 'message_hub': Payload(marker)}, path)
    return path, marker


def test_resume_and_load_from_refuse_a_pickle_payload_with_the_environment_forcing_pickle(tmp_path, forced_pickle):
    from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint, load_checkpoint
    path, marker = planted(tmp_path)
    for load in (lambda: CheckpointLoader.load_checkpoint(str(path), map_location='cpu'),  # Runner.resume
                 lambda: _load_checkpoint(str(path), map_location='cpu'),
                 lambda: load_checkpoint(torch.nn.Linear(1, 1), str(path), map_location='cpu')):  # load_from
        with pytest.raises(pickle.UnpicklingError):
            load()
        assert not marker.exists()


def test_a_checkpoint_url_is_loaded_weights_only_too(tmp_path, forced_pickle, monkeypatch):
    from mmengine.runner.checkpoint import CheckpointLoader

    from src.synthetic.url_server import Response, UrlServer
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch-home'))  # where torch.hub caches the download
    path, marker = planted(tmp_path)
    with UrlServer() as server:
        url = server.add('/iter_20.pth', Response(path.read_bytes()))
        with pytest.raises(pickle.UnpicklingError):
            CheckpointLoader.load_checkpoint(url, map_location='cpu')  # load_from = 'http://...'
    assert server.fetched() == 1 and not marker.exists()


def test_mmengine_checkpoints_still_load_with_the_environment_forcing_pickle(tmp_path, forced_pickle):
    from mmengine.logging import MessageHub
    from mmengine.runner.checkpoint import CheckpointLoader
    hub = MessageHub.get_instance('trust-checkpoints')
    hub.update_scalar('train/loss', 0.5)
    path = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'iter': 3}, 'state_dict': {'w': torch.ones(2)}, 'message_hub': hub.state_dict()}, path)
    loaded = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert loaded['meta'] == {'iter': 3} and loaded['message_hub']['log_scalars']['train/loss'].current() == 0.5


def test_the_train_tool_makes_checkpoints_weights_only_before_the_runner_loads_one():
    source = (REPO / 'tools' / 'train.py').read_text()
    assert source.index('import src.engine') < source.index('.from_cfg(cfg)')


# ---- the data position a checkpoint carries (ResumableTrainLoop) ----------------------------------

def _position(**changes) -> dict:
    saved = {'batch_size': 4, 'world_size': 2, 'dataset_size': 22, 'sampler': 'FixedBatchMultiSourceSampler',
             'seed': 0, 'samples_per_epoch': 16, 'data': None, 'buckets': 'ab12', 'repeat': [2, 1],
             'origin': [0, [0, 0]], 'history': [[0, 6, [0, 0]], [5, 8, [3, 2]]], 'filters': None,
             'deals': [[0, 2, 4, 2, 8, 4], [5, 1, 4, 1, 8, 4]]}
    return saved | changes


@pytest.mark.parametrize('name, value', [
    ('repeat', [10 ** 12, 1]),  # a turn of 10^12 batches: made as a list, it fills the memory
    ('history', [[0, 0]]),  # a global batch of 0: a division by zero
    ('history', [[0, 8], [3, 4]] * 3000),  # more changes than resumes
    ('history', [[5, 8]]),  # not from the start
    ('history', [[0, 8, [0, 0]], [5, 6, [3, 2]]]),  # its last global batch not the run's (4 x 2)
    ('deals', [[0, 10 ** 9, 4, 1, 8, 4]]),  # a replay over 10^9 ranks
    ('world_size', True), ('batch_size', '4'), ('dataset_size', -1), ('sampler', 'os.system("id")'),
    ('data', 'x' * 10 ** 6), ('origin', [0, 'all']), ('filters', ['f' * 10 ** 6])])
def test_a_malformed_data_position_is_refused_naming_the_fact(name, value):
    from src.engine.data_facts import DataFacts, ResumeError
    with pytest.raises(ResumeError, match=rf"malformed '{name}' .*load_from"):
        DataFacts.from_dict(_position(**{name: value}))
    assert DataFacts.from_dict(_position()).deals[1] == [5, 1, 4, 1, 8, 4]  # a real one passes
    with pytest.raises(ResumeError, match='not a mapping'):
        DataFacts.from_dict([1, 2])


def test_a_block_shuffle_deal_beyond_its_dataset_is_refused_before_it_is_replayed():
    from src.datasets.samplers.block_sampler import BlockShuffleSampler
    sampler = BlockShuffleSampler(list(range(100)), block_size=8, seed=0, batch_size=4)
    with pytest.raises(ValueError, match='more ranks x block than 65536 for 100 samples'):
        sampler.set_deals(5, [[0, 60000, 4, 1, 60000, 4]], 4)  # 3.6e9 indices a replayed epoch


def test_a_resume_from_a_checkpoint_with_a_hostile_position_ends_with_the_error(tmp_path):
    import sys
    sys.path.insert(0, str(REPO / 'tests'))
    from epoch_run import train

    from src.engine import ResumableTrainLoop
    from src.engine.data_facts import ResumeError
    train(tmp_path / 'run', dict(type=ResumableTrainLoop, max_iters=3), 4)
    checkpoint = torch.load(tmp_path / 'run' / 'iter_3.pth', weights_only=True)
    checkpoint['message_hub']['runtime_info']['data_position']['history'] = [[0, 0], [1, 4]]
    torch.save(checkpoint, tmp_path / 'hostile.pth')
    with pytest.raises(ResumeError, match="malformed 'history'"):
        train(tmp_path / 'resumed', dict(type=ResumableTrainLoop, max_iters=6), 4, resume_from=str(tmp_path / 'hostile.pth'))
