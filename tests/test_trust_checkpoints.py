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
