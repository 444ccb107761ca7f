"""The dataset report as one self-contained HTML page: plots (matplotlib, embedded as PNG), the
numbers beside them, and a preview grid of samples as the model sees them."""
from __future__ import annotations

import base64
import html
import io

import numpy as np

from src.datasets.extras import require
from src.report.funnel import filter_section
from src.report.statistics import DatasetStats

STYLE = '''body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .7em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:1em}
.grid{display:flex;flex-wrap:wrap;gap:.8em}.tile{width:220px;font-size:.8em}
.frame{width:220px;height:220px;display:flex;align-items:center;justify-content:center;background:#f4f4f4}
.frame img{max-width:220px;max-height:220px}
.warn{color:#a33;font-weight:bold}'''


def _png(figure) -> str:
    from matplotlib.ticker import MaxNLocator
    for axis in figure.axes:  # counts of prompts, images, captions: whole numbers
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=90, bbox_inches='tight')
    import matplotlib.pyplot as plt
    plt.close(figure)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _plots(stats: DatasetStats) -> list[str]:
    matplotlib = require('matplotlib')
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    plots = []
    histogram = stats.all_prompts.get('histogram', {})
    if histogram.get('counts') or stats.prompt_tokens:
        figure, axis = plt.subplots(figsize=(5.5, 3.2))
        if histogram.get('counts'):  # every stored prompt, binned when the numbers were made
            axis.stairs(histogram['counts'], histogram['edges'], fill=True, color='#4a7ab5')
            title = f'prompt length (tokens), all {stats.all_prompts["stored"]} stored'
        else:
            axis.hist(stats.prompt_tokens, bins=40, color='#4a7ab5')
            title = f'prompt length (tokens), {len(stats.prompt_tokens)} sampled'
        # between the longest prompt kept whole and the shortest one cut
        axis.axvline(stats.max_length + 0.5, color='#c33', linestyle='--', label=f'max_length {stats.max_length}')
        axis.set(title=title, xlabel='tokens', ylabel='prompts')
        axis.legend()
        plots.append(_png(figure))
    if stats.widths:
        widths, heights = np.array(stats.widths), np.array(stats.heights)
        figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        axes[0].scatter(widths, heights, s=6, alpha=.5, color='#4a7ab5')
        axes[0].set(title=f'image size ({stats.sizes_from})', xlabel='width', ylabel='height')
        axes[1].hist(np.log2(widths / heights), bins=40, color='#6a9a4a')
        axes[1].set(title='aspect ratio', xlabel='log2(width / height)', ylabel='images')
        plots.append(_png(figure))
    counts = stats.buckets.get('counts')
    if counts:
        figure, axis = plt.subplots(figsize=(max(5.5, 0.25 * len(counts)), 3.2))
        axis.bar(range(len(counts)), list(counts.values()), color='#8a5ab5')
        axis.set_xticks(range(len(counts)), list(counts), rotation=90, fontsize=7)
        axis.set(title=f'records per bucket ({stats.buckets["label"]}, {stats.buckets["over"]})',
                 xlabel='bucket (height x width)', ylabel='records')
        plots.append(_png(figure))
    if stats.caption_chars:
        figure, axis = plt.subplots(figsize=(5.5, 3.2))
        axis.hist(stats.caption_chars, bins=40, color='#b5824a')
        axis.set(title='caption length', xlabel='characters', ylabel='captions')
        plots.append(_png(figure))
    return plots


def _table(rows: list[tuple], header: tuple) -> str:
    cells = ''.join('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>' for row in rows)
    return f'<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr>{cells}</table>'


def dataset_section(stats: DatasetStats, tiles: list[tuple[str, str]]) -> str:
    """One dataset: counts and drops, prompt lengths, images, captions, preview (image data URL, caption)."""
    lengths = np.array(stats.prompt_tokens or [0])
    counts = [('records in the index', stats.records), ('usable (the dataset keeps)', stats.usable),
              ('dropped when loading (no image, too small, aspect, filters)', stats.records - stats.usable),
              ('sampled for this report', stats.sampled)]
    counts += [(f'dropped by the preparation tool: {reason}', n) for reason, n in sorted(stats.prepare_drops.items())]
    counts += [(f'sampled, unusable: {reason}', n) for reason, n in sorted(stats.failures.items())]
    if stats.decoded:
        counts.append(('read as training reads them' + (' (every record: --verify)' if stats.decoded_all else
                                                          ' (a sample; --verify reads all)'), stats.decoded))
        counts += [(f'failed when read: {reason}', n) for reason, n in sorted(stats.decode_failures.items())]
    prompts = [('median / 95th percentile / longest', f'{np.median(lengths):.0f} / {np.percentile(lengths, 95):.0f} / '
                                                       f'{lengths.max()}'),
               ('longer than max_length: cut (truncation="ids", upstream)',
                f'{stats.cut} ({stats.cut / max(len(stats.prompt_tokens), 1):.1%})'),
               ('of them losing IMG_START_TOKEN', stats.lose_image_start),
               ('losing IMG_START_TOKEN with truncation="caption"', 0)]
    prompt_columns = ('prompts', 'sampled')
    whole = stats.all_prompts
    if whole.get('stored'):
        prompt_columns += (f'all {whole["stored"]} stored',)
        column = [f'{whole["median"]:.0f} / {whole["p95"]:.0f} / {whole["longest"]}',
                  f'{whole["cut"]} ({whole["cut"] / whole["stored"]:.1%})', whole['lose_image_start'], 0]
        prompts = [row + (value,) for row, value in zip(prompts, column)]
    not_stored = (f'<p>{whole["not_stored"]} records have their caption in an annotation file: their prompt ids '
                  f'are not stored, and only the sampled ones among them are counted.</p>'
                  if whole.get('not_stored') else '')
    captions = [('duplicates among the sampled', stats.duplicate_captions),
                ('median length (characters)', f'{np.median(stats.caption_chars or [0]):.0f}')]
    _, lost, among = stats.prompt_counts()
    warn = (f'<p class="warn">{lost} of {among} lose IMG_START_TOKEN at max_length: raise max_length or use '
            'truncation="caption".</p>' if lost else '')
    failed = sum(stats.decode_failures.values())
    unreadable = (f'<p class="warn">{failed} of {stats.decoded} records read failed '
                  f'({", ".join(f"{reason} {n}" for reason, n in sorted(stats.decode_failures.items()))}): training '
                  f'skips them, about {failed / stats.decoded:.1%} of the {stats.usable} usable records. For example:</p>'
                  f'<ul>{"".join(f"<li>{html.escape(line)}</li>" for line in stats.decode_examples)}</ul>'
                  if failed else '')
    # each sample at its own shape (a bucket's 256x146 stays wide), scaled into the same square frame
    grid = ''.join(f'<div class="tile"><div class="frame"><img src="{image}"></div>'
                   f'<div>{html.escape(caption[:200])}</div></div>' for image, caption in tiles)
    return (f'<h2>{html.escape(stats.data_path)}</h2>{unreadable}{_table(counts, ("records", "count"))}'
            f'{filter_section(stats.filters, _png)}'
            f'<h3>prompts</h3>{warn}{_table(prompts, prompt_columns)}{not_stored}'
            f'<h3>captions</h3>{_table(captions, ("captions", "sampled"))}{_buckets(stats.buckets)}'
            f'<div class="plots">{"".join(_plots(stats))}</div><h3>samples as the model sees them</h3>'
            f'<div class="grid">{grid}</div>')


def _buckets(buckets: dict) -> str:
    """The aspect-ratio buckets' table: records per bucket (per epoch) and the area kept."""
    if not buckets.get('counts'):
        return ''
    how = ('buckets of this dataset' if buckets['configured'] else
           f'this dataset crops squares; with buckets=dict(table=...) ({buckets["label"]})')
    kept = buckets.get('kept_area')
    rows = [('buckets holding records', len(buckets['counts'])),
            ('picture area a sample keeps, bucketed', f'{kept:.1%}' if kept is not None else '-'),
            ('picture area a sample keeps, square crop',
             f'{buckets["kept_area_square"]:.1%}' if kept is not None else '-'),
            ('sampled pictures more elongated than every bucket', buckets['outside'])]
    per_bucket = [(key, n) for key, n in buckets['counts'].items()]
    return (f'<h3>aspect-ratio buckets</h3><p>{html.escape(how)}; records per bucket over {buckets["over"]} '
            '(each epoch reads each once; a bucket\'s last partial batch is carried into the next epoch)</p>'
            f'{_table(rows, ("buckets", ""))}{_table(per_bucket, ("bucket", "records"))}')


def page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{"".join(sections)}</body></html>')


def image_data_url(pixel_values, side: int = 256) -> str:
    """A [3, H, W] tensor in [-1, 1] as an embedded JPEG thumbnail: PNGs of every sample would make the
    page many times heavier to open."""
    from src.report.preview import to_image
    image = to_image(pixel_values)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format='JPEG', quality=85)
    return f'data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}'
