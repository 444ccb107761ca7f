"""Midjourney preparation's fixed cost: a run imports neither torch (the resizer's, only with
--resize-to) nor pandas (which pyarrow's pa.array, pa.scalar, pq.read_table and to_numpy pull in),
whatever the size of the download; the Arrow arrays built from buffers equal pa.array's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from src.prepare.listing import bool_array, row_array, string_array

REPO = Path(__file__).resolve().parents[1]


def test_a_run_of_the_tool_imports_neither_torch_nor_pandas(tmp_path):
    from src.synthetic.downloads import MAKERS
    download = MAKERS['midjourney23m'](tmp_path / 'mj', n=10, shards=2, faults=False)
    script = ('import json, sys\n'
              'sys.argv = ["prepare_midjourney23m.py", "--root", sys.argv[1], "--num-processes", "1"]\n'
              'import runpy\n'
              'code = None\n'
              'try:\n'
              '    runpy.run_path("tools/prepare_midjourney23m.py", run_name="__main__")\n'
              'except SystemExit as e:\n'
              '    code = e.code\n'
              'print(json.dumps({"code": code, "loaded": sorted(m for m in ("torch", "pandas", "PIL") '
              'if m in sys.modules)}))\n')
    done = subprocess.run([sys.executable, '-c', script, str(download.root)], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {'code': 0, 'loaded': []}, done.stderr[-2000:]
    assert json.loads((download.root / 'data.json').read_text())  # the index was built


@pytest.mark.parametrize('values', [['a', 'bé', '', 'images/x y.jpg'], [], ['東京/1.png'] * 3])
def test_arrays_from_buffers_equal_pa_array(values):
    built = string_array(values)
    built.validate(full=True)
    assert built.equals(pa.array(values, pa.string()))
    mask = np.random.default_rng(len(values)).random(37) > 0.5
    assert bool_array(mask).equals(pa.array(mask)) and bool_array(mask[3:20]).equals(pa.array(mask[3:20]))
    rows = np.array([5, 0, 2], np.int32)
    assert row_array(rows).equals(pa.array(rows.astype(np.int64)))


def test_a_name_that_is_no_utf8_is_refused_as_pa_array_refuses_it():
    with pytest.raises(Exception) as built:
        string_array(['ok', 'bad\udcff'])
    with pytest.raises(Exception) as direct:
        pa.array(['ok', 'bad\udcff'], pa.string())
    assert type(built.value) is type(direct.value)
