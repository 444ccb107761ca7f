"""What a training run logged per iteration (``<work_dir>/<time>/vis_data/<time>.json``, one JSON
line per logged iteration, the ``batch_digest`` of each batch included), and the check of a resume:
the batches of a stopped and resumed run against an uninterrupted one's."""
from __future__ import annotations

import json
from pathlib import Path


def logged_iterations(work_dir: str | Path) -> dict[int, dict]:
    """Iteration -> what was logged for it, over the runs in ``work_dir`` in order (a resumed run's
    lines replace those of the run it resumed)."""
    logged = {}
    for log in sorted(Path(work_dir).glob('*/vis_data/*.json')):
        if log.name == 'scalars.json':
            continue
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if 'iter' in entry:
                logged[entry['iter']] = entry
    return logged


def compare_batches(run: dict[int, dict], reference: dict[int, dict], start: int = 1) -> tuple[list[int], int | None]:
    """The iterations from ``start`` that both runs logged with a batch digest, and the first whose
    batches differ (None: all the same)."""
    common = sorted(i for i in run if i >= start and i in reference
                    and 'batch_digest' in run[i] and 'batch_digest' in reference[i])
    differs = next((i for i in common if run[i]['batch_digest'] != reference[i]['batch_digest']), None)
    return common, differs
