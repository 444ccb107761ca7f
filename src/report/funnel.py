"""The report's view of the records a dataset's filters keep: the funnel (records before and after
each filter, as a chart), a histogram per score column of the index, and the duplicate clusters.
Over every record (the index's memory-mapped columns), not a sample."""
from __future__ import annotations

import html

import numpy as np
import pyarrow as pa

from src.datasets.extras import require
from src.datasets.index.filters import CLUSTER_COLUMN

# Numeric index columns that describe the file rather than score the picture.
NOT_SCORES = frozenset({'width', 'height', 'original_width', 'original_height', CLUSTER_COLUMN})
BINS = 40


def filter_stats(dataset) -> dict:
    """The funnel, score histograms and duplicate counts of ``dataset`` (a CaptionDataset)."""
    whole = dataset.index.whole()
    steps = [['records in the index', len(whole)]]
    funnel = getattr(dataset, 'funnel', None) or []
    steps.append(['kept by the dataset\'s own checks (image path, size, aspect)',
                  funnel[0][1] if funnel else len(dataset)])
    steps += [[label, after] for label, _, after in funnel]
    if steps[-1][1] != len(dataset):
        steps.append(['kept (after aspect-ratio buckets)', len(dataset)])
    scores = {}
    for name in whole.columns:
        kind = whole.column_type(name)
        if name in NOT_SCORES or not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
            continue
        values = whole.numbers(name)
        known = values[np.isfinite(values)]
        counts, edges = np.histogram(known, bins=BINS) if len(known) else (np.zeros(0), np.zeros(0))
        scores[name] = dict(counts=counts.tolist(), edges=edges.tolist(), known=int(len(known)),
                            missing=int(len(values) - len(known)),
                            thresholds=[[op, value] for column, op, value in (dataset.filters or {}).get('where', [])
                                        if column == name and not isinstance(value, str)])
    duplicates = {}
    if CLUSTER_COLUMN in whole.columns:
        clusters = whole.numbers(CLUSTER_COLUMN)
        clustered = clusters[np.isfinite(clusters)]
        duplicates = dict(records_in_clusters=int(len(clustered)), clusters=int(len(np.unique(clustered))),
                          beyond_the_first=int(len(clustered) - len(np.unique(clustered))))
    return dict(filters=dataset.filters, funnel=steps, scores=scores, duplicates=duplicates)


def _table(rows, header) -> str:
    cells = ''.join('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>' for row in rows)
    return f'<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr>{cells}</table>'


def filter_section(stats: dict, png) -> str:
    """The section's HTML; ``png(figure)`` embeds a matplotlib figure."""
    if not stats:
        return ''
    require('matplotlib').use('Agg')
    import matplotlib.pyplot as plt
    steps = stats['funnel']
    rows = [(label, count, '' if i == 0 else steps[i - 1][1] - count) for i, (label, count) in enumerate(steps)]
    figure, axis = plt.subplots(figsize=(7.5, 0.45 * len(steps) + 1))
    labels = [label if len(label) < 48 else label[:45] + '...' for label, _ in steps]
    axis.barh(range(len(steps)), [count for _, count in steps], color='#4a7ab5')
    for i, (_, count) in enumerate(steps):
        axis.text(count, i, f' {count}', va='center', fontsize=8)
    axis.set_yticks(range(len(steps)), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set(title='records after each step (the funnel)', xlabel='records')
    plots = [png(figure)]
    for name, score in stats['scores'].items():
        if not score['counts']:
            continue
        figure, axis = plt.subplots(figsize=(4.5, 2.8))
        axis.stairs(score['counts'], score['edges'], fill=True, color='#6a9a4a')
        for op, value in score['thresholds']:
            axis.axvline(value, color='#c33', linestyle='--', label=f'where {op} {value:g}')
        if score['thresholds']:
            axis.legend(fontsize=8)
        axis.set(title=f'{name} ({score["known"]} records, {score["missing"]} without)', xlabel=name,
                 ylabel='records')
        plots.append(png(figure))
    filters = stats['filters']
    head = (f'<p>filters: <code>{html.escape(str(filters))}</code></p>' if filters else
            '<p>no filters (preview some with <code>tools/inspect_dataset.py CONFIG --filters "..."</code>)</p>')
    duplicates = stats['duplicates']
    dup_table = _table([(key.replace('_', ' '), value) for key, value in duplicates.items()],
                       ('duplicate clusters (tools/find_duplicates.py)', 'records')) if duplicates else ''
    return (f'<h3>filters and scores</h3>{head}{_table(rows, ("step", "records after", "dropped"))}{dup_table}'
            f'<div class="plots">{"".join(plots)}</div>')
