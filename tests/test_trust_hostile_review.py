"""A hostile review of three changes: the one deadline of object-store requests (a trickled index
download, a body that never ends), a checkpoint's data position that passes its checks yet drives
the samplers into a hang or a raw traceback, and a block shuffle resumed under other deals. Real
servers on 127.0.0.1 (moto's, behind the trickling proxy of ``test_trust_deadlines``; a store of a
few lines), no mocks of boto3 or obstore."""
from __future__ import annotations

import pytest

from test_trust_deadlines import NO_HANG, SECRET, store, within  # noqa: F401 (store: a fixture)

from src.datasets.storage import deadlines


# ---- 1. object stores -------------------------------------------------------------------------

@pytest.mark.slow
def test_an_index_download_that_trickles_ends_at_the_deadline(store, tmp_path, monkeypatch):
    """fetch_to_cache's download had only botocore's idle read timeout: an index whose body came a
    byte every 0.2 s held the start of every rank for ever (a tar index of megabytes: weeks)."""
    from src.datasets.storage.object_config import StorageConfigError
    from src.datasets.storage.object_store import fetch_to_cache
    proxy, config = store
    monkeypatch.setattr(deadlines, 'REQUEST_DEADLINE', 1.0)
    proxy.slow_keys.add('packed/tar_index.arrow')

    def fetch():
        with pytest.raises(StorageConfigError, match=r's3://data/packed/tar_index.arrow: cannot be fetched: .*did not '
                                                     r'all come within .*REQUEST_DEADLINE = 1 s') as caught:
            fetch_to_cache('s3://data/packed/tar_index.arrow', config, tmp_path / 'cache')
        return str(caught.value)
    message = within(NO_HANG, fetch)
    assert SECRET not in message and proxy.trickled >= 1
    assert not [path for path in (tmp_path / 'cache').rglob('*') if path.name == 'tar_index.arrow']  # no copy kept
    proxy.slow_keys.clear()
    copy = fetch_to_cache('s3://data/packed/tar_index.arrow', config, tmp_path / 'cache')
    from src.datasets.storage.tar_index import TarMemberIndex
    assert TarMemberIndex(copy).locate  # the same fetch goes on once the store sends
