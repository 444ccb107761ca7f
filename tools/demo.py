"""The whole data layer on miniature copies of the five downloads, offline, in well under a minute.

1. writes a miniature raw download of each dataset (and of megalith-10m, an editing dataset) under
   <workdir>/data/, laid out as the hub has it (and as its guide draws it where they agree), with the
   faults real downloads have (rows without images, missing and malformed caption files, corrupt
   images, a tar cut short, members that try to escape the folder); and for laion6m, redcaps5m and
   cc3m (image-to-text), the URL parquets upstream ships today, under <workdir>/urls/data/, whose URLs
   a local HTTP server on 127.0.0.1 serves (some fail: 404, a page that is no image, a timeout);
2. prepares each with its tool's library (as `tools/prepare_<name>.py --num-processes 2` does; the
   URL parquets are fetched through img2dataset) and checks the result against what the download implies: the right index entries, the cut tar
   reported, nothing written outside the dataset folders;
3. builds a local tokenizer, loads configs/datasets/<name>.py (<name>_recap.py for the URL route) and mix.py as a training run would
   (Config.fromfile, Runner.build_dataloader; only the tokenizer path, image size, batch size and
   workers changed), iterates a few batches and prints a table;
4. saves <workdir>/preview.png: samples of each dataset as the model sees them, with the prompt
   decoded from input_ids.

It also leaves in <workdir> what the tools need offline: tokenizer/ (for --tokenizer) and
tiny-vae/ (a tiny AutoencoderDC with random weights, for tools/cache_latents.py --vae). With
--download-only it writes the raw downloads, the tokenizer and the autoencoder only: what
docs/walkthrough.md starts from.

Exits non-zero, saying what went wrong, when any step does not give what it should.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs' / 'datasets'
MARKER = '.t2i-demo'  # marks a workdir as the demo's own, so that re-running may clear it
logger = logging.getLogger('demo')


class DemoError(Exception):
    """A step did not give what it should; the message says what and where."""


@contextlib.contextmanager
def step(what: str):
    """Run a step; any failure becomes a DemoError naming the step."""
    logger.info('\n== %s', what)
    try:
        yield
    except DemoError:
        raise
    except Exception as err:
        traceback.print_exc()
        raise DemoError(f'{what}: {type(err).__name__}: {err}') from err


def clear_workdir(workdir: Path) -> None:
    """An empty workdir for this run; refuses to clear a folder the demo did not make."""
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise DemoError(f'{workdir} exists and was not made by the demo: pass another --workdir')
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).touch()


def check_preparation(expected, report) -> list[str]:
    """What differs between the prepared dataset and what its download implies."""
    from src.datasets.index.sample_index import SampleIndex

    problems = []
    cut_tars = {f.path.split(':')[0] for f in expected.faults if f.kind == 'truncated-member'}
    if set(report.by_status('partial')) != cut_tars:
        problems.append(f'tars reported partial: {report.by_status("partial")}, expected {sorted(cut_tars)}')
    if report.by_status('failed'):
        problems.append(f'tars failed: {report.by_status("failed")}')
    if report.index_error or report.index_skipped:
        problems.append(f'index not built: {report.index_error or report.index_skipped}')
    escaped = [str(p) for p in expected.must_not_exist if p.exists() or p.is_symlink()]
    if escaped:
        problems.append(f'unsafe members were written: {escaped}')
    index_path = expected.root / expected.data_path
    if not problems:
        index = SampleIndex.load(str(index_path), use_cache=False)
        image_key = 'filename' if expected.data_path.endswith('.parquet') else 'image'
        indexed = {index[i][image_key] for i in range(len(index))}
        if indexed != expected.indexed:
            problems.append(f'{index_path}: entries missing {sorted(expected.indexed - indexed)}, '
                            f'unexpected {sorted(indexed - expected.indexed)}')
    return problems


@dataclass
class Row:
    name: str
    entries: int
    dropped_by_tool: int
    usable: int
    shapes: str
    samples_per_s: float


def iterate(name: str, tokenizer_path: str, args):
    """Build ``configs/datasets/<name>.py``'s dataloader as a training run does and read
    ``args.batches`` batches; return the dataset, the first batch and the samples per second."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from src.synthetic.local_config import localize

    cfg = Config.fromfile(str(CONFIGS / f'{name}.py'))
    loader_cfg = localize(cfg, tokenizer_path, dataset_overrides=dict(image_size=args.image_size),
                          batch_size=args.batch_size, num_workers=args.num_workers, pin_memory=False)
    loader = Runner.build_dataloader(loader_cfg, seed=args.seed)
    start = time.perf_counter()
    batches, first_at = [], None
    for batch in loader:
        batches.append(batch)
        first_at = first_at or time.perf_counter()
        if len(batches) == args.batches:
            break
    end = time.perf_counter()
    # Timed from the first batch on, so that worker start-up does not count as loading.
    timed, seconds = (len(batches) - 1, end - first_at) if len(batches) > 1 else (1, end - start)
    return loader.dataset, batches[0], timed * args.batch_size / seconds


def preview_tiles(batch: dict, dataset, count: int) -> list:
    from src.report.preview import Tile, caption_from_prompt, to_image

    data, tiles = batch['data'], []
    for i in range(min(count, len(data['pixel_values']))):
        ids = data['input_ids'][i][data['attention_mask'][i]]
        prompt = dataset.tokenizer.decode(ids, skip_special_tokens=False)
        caption, unconditional = caption_from_prompt(prompt, dataset.prompt_template)
        note = 'unconditional (CFG prompt)' if unconditional else ''
        tiles.append(Tile(to_image(data['pixel_values'][i]), caption, note))
    return tiles


def print_table(rows: list[Row]) -> None:
    header = ('dataset', 'index entries', 'dropped by tool', 'usable', 'batch: pixel_values input_ids',
              'samples/s')
    cells = [header] + [(r.name, str(r.entries), str(r.dropped_by_tool), str(r.usable), r.shapes,
                         f'{r.samples_per_s:.1f}') for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print('  '.join(cell.ljust(w) for cell, w in zip(row, widths)))
        if n == 0:
            print('  '.join('-' * w for w in widths))


URL_ROUTE = ('laion6m', 'redcaps5m')  # the datasets whose download today is URL parquets
FAMILY_CONFIGS = {'megalith10m': 'megalith10m_reconstruct', 'cc3m': 'cc3m_image2text'}  # editing, image-to-text


def run(args) -> Path | None:
    """The four steps; returns the preview's path (None with --download-only)."""
    workdir = Path(args.workdir).resolve()
    clear_workdir(workdir)  # before the slow imports, so that a wrong --workdir is refused at once
    from src.prepare import datasets as prepare
    from src.prepare.recap import DownloadOptions
    from src.synthetic.downloads import DEFAULT_ROOTS, FAMILY_MAKERS, FAMILY_ROOTS, make_all, make_recap
    from src.report.preview import grid
    from src.synthetic.url_server import UrlServer

    # config name -> (the folder its data/ is in, the download, its --root)
    downloads = {}
    with contextlib.ExitStack() as stack:
        with step(f'1. miniature raw downloads of the five datasets and of megalith-10m (editing) under '
                  f'{workdir / "data"}, and the URL parquets of {", ".join(URL_ROUTE)} and cc3m (image-to-text) '
                  f'under {workdir / "urls" / "data"}, served on 127.0.0.1'):
            os.chdir(workdir)  # the tools' default roots and the configs' paths start at data/
            # The walkthrough's download has no tar cut short: its prepare step ends with exit status 0.
            options = dict(n=args.samples, seed=args.seed, faults=True, hostile=True,
                           truncated_tar=not args.download_only)
            expected = make_all(Path('data').resolve(), **options)
            downloads.update((name, (workdir, exp, DEFAULT_ROOTS[name])) for name, exp in expected.items())
            server = stack.enter_context(UrlServer())
            for name in () if args.download_only else FAMILY_MAKERS:
                root = FAMILY_ROOTS[name]
                downloads[FAMILY_CONFIGS[name]] = (workdir, FAMILY_MAKERS[name](root, **options), root)
            for name in () if args.download_only else (*URL_ROUTE, 'cc3m'):
                root = workdir / 'urls' / {**DEFAULT_ROOTS, **FAMILY_ROOTS}[name]
                downloads[FAMILY_CONFIGS.get(name, f'{name}_recap')] = (
                    workdir / 'urls', make_recap(name, root, server, n=args.samples, seed=args.seed), str(root))
            for name, (_, exp, root) in downloads.items():
                logger.info('%-16s %s: %d samples, %d faults', name, os.path.relpath(root, workdir),
                            len(exp.samples), len(exp.faults))

        tools_need = offline_models(workdir)
        if args.download_only:
            logger.info('raw downloads in %s; %s', workdir / 'data', tools_need)
            return None

        prepared = {}  # name -> (index entries, entries dropped)
        for name, (base, exp, root) in downloads.items():
            with step(f'2. prepare {name} (tools/prepare_{exp.name}.py --root {os.path.relpath(root, workdir)} '
                      f'--num-processes 2)'):
                # The served timeout answers after 3 s: a 1 s timeout fails it without waiting long. The
                # server is on 127.0.0.1: the tools' --allow-local-urls.
                url_col = {'cc3m': 'image_url'}.get(exp.name, 'url')
                options = ({'download': DownloadOptions(url_col=url_col, timeout=1, samples_per_shard=4,
                                                        allow_local_urls=True)}
                           if base == workdir / 'urls' else {})
                report = getattr(prepare, f'prepare_{exp.name}')(root, num_processes=2, **options)
                report.finish()
                problems = check_preparation(exp, report)
                if problems:
                    raise DemoError(f'preparing {name} did not give what the download implies:\n  '
                                    + '\n  '.join(problems))
                failed_urls = sum(report.download['failed_by_reason'].values()) if report.download else 0
                prepared[name] = (sum(index.entries for index in report.indexes),
                                  sum(index.drops.total() for index in report.indexes) + failed_urls)
                if report.download is not None:
                    logger.info('-> as expected: %d index entries; %d URLs downloaded, %d failed (counted by reason)',
                                prepared[name][0], report.download['successes'], failed_urls)
                else:
                    logger.info('-> as expected: %d index entries, %d dropped, %d unsafe members refused, '
                                'the cut tar reported', *prepared[name], report.refused().total())

    with step('3. load the configs and iterate their dataloaders'):
        tokenizer_path = str(workdir / 'tokenizer')
        rows, sections = [], []
        for name in [*downloads, 'mix']:
            os.chdir(downloads[name][0] if name in downloads else workdir)
            dataset, batch, rate = iterate(name, tokenizer_path, args)
            parts = list(expected) if name == 'mix' else [name]
            data = batch['data']
            rows.append(Row(name, sum(prepared[p][0] for p in parts), sum(prepared[p][1] for p in parts),
                            len(dataset), f'{list(data["pixel_values"].shape)} {list(data["input_ids"].shape)}',
                            rate))
            if name != 'mix':
                _, exp, root = downloads[name]
                if not len(exp.samples) <= len(dataset) <= len(exp.indexed):
                    raise DemoError(f'{name}: the dataset has {len(dataset)} samples; the download has '
                                    f'{len(exp.samples)} usable ones and {len(exp.indexed)} index entries')
            if name in expected or name.endswith('_recap'):  # text to image: the prompt holds the caption
                sections.append((f'{name}  ({os.path.relpath(downloads[name][2], workdir)})',
                                 preview_tiles(batch, dataset, args.preview_per_dataset)))
        print()
        print_table(rows)
        print('(usable: samples the dataset class keeps; it also skips, with a warning, images that '
              'turn out unreadable when loaded)')

    with step('4. preview grid'):
        path = workdir / 'preview.png'
        grid(sections).save(path)
    return path


def offline_models(workdir: Path) -> str:
    """The tokenizer and the tiny autoencoder the tools take offline (--tokenizer, --vae)."""
    from src.datasets.extras import MissingExtra
    from src.synthetic.autoencoder import build_autoencoder
    from src.synthetic.tokenizer import build_tokenizer
    build_tokenizer(workdir / 'tokenizer')
    try:
        build_autoencoder(workdir / 'tiny-vae')
    except MissingExtra as e:
        return f'tokenizer/ for --tokenizer; no tiny-vae/ ({e})'
    return 'tokenizer/ for --tokenizer, tiny-vae/ for --vae'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', default='demo_output', help='where everything goes (default: %(default)s)')
    parser.add_argument('--samples', type=int, default=12, help='well-formed samples per dataset (default: %(default)s)')
    parser.add_argument('--batches', type=int, default=3, help='batches read per dataloader (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=4, help='(default: %(default)s)')
    parser.add_argument('--image-size', type=int, default=256, help='(default: %(default)s)')
    parser.add_argument('--num-workers', type=int, default=2, help='DataLoader workers (default: %(default)s)')
    parser.add_argument('--preview-per-dataset', type=int, default=4, help='(default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='(default: %(default)s)')
    parser.add_argument('--download-only', action='store_true',
                        help='write the raw downloads, tokenizer/ and tiny-vae/ only (docs/walkthrough.md)')
    args = parser.parse_args(argv)
    # The tokenizer is used before the DataLoader forks its workers; say so once instead of per fork.
    os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
    from src.cli.logs import setup_logging
    setup_logging('demo')
    started = time.perf_counter()
    try:
        preview = run(args)
    except DemoError as err:
        print(f'\ndemo FAILED: {err}', file=sys.stderr)
        return 1
    print(f'\ndemo OK in {time.perf_counter() - started:.0f} s' + (f'; preview: {preview}' if preview else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
