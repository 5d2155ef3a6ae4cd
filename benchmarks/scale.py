"""How the cost of stages 00 -> 02 (ingest, quality, preprocess) grows with the number of photos (issue 13 item 4).

The real photos of ../shared/data (by default the two folders of configs/shared.yaml) are replicated 1x, 4x, 16x by
hard links under new patient ids (`<patient>r<k>_<eye>`), with a trainLabels.csv to match, and stages 00, 01, 02 run
on each in a fresh process. Printed per scale and stage: seconds per 1,000 photos and the stage process's peak RSS,
then the targets: per-photo time at the largest scale within 1.2x of 1x, peak memory within 1.5x, and reading
88,702 label rows plus listing an 88k-file folder in a few seconds (< 5 s). The machine may be shared: the load
average is printed with each row.

    nice -n 10 .venv/bin/python benchmarks/scale.py [--scales 1 4 16] [--folders eyepacs-1024/train eyepacs-256/train]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import pandas as pd
from dr_detection.config import shared_data

STAGES = {'00': 'dr_detection.data:run_data', '01': 'dr_detection.quality:run_quality',
          '02': 'dr_detection.preprocess:run_preprocess'}
RUN = """import sys; from importlib import import_module; from dr_detection.config import load_config
mod, fn = sys.argv[1].split(':'); getattr(import_module(mod), fn)(load_config(sys.argv[2]), sys.argv[3])"""


def _link(src:Path, dst:Path):
    try: os.link(src, dst)
    except OSError: os.symlink(src, dst)


def make_layout(root:Path, folders:list[Path], labels:pd.DataFrame, k:int) -> Path:
    "`k` replicas of the photos of `folders` as hard links in `root/train`, with `root/trainLabels.csv`; the config."
    (root/'train').mkdir(parents=True)
    lab, rows, seen = labels.set_index('image').level, [], set()
    for folder in folders:
        for p in sorted(folder.glob('*.jpeg')):
            if p.stem in seen or p.stem not in lab.index: continue
            seen.add(p.stem); pat, eye = p.stem.rsplit('_', 1)
            for r in range(k):
                name = f'{pat}r{r}_{eye}'; _link(p, root/'train'/f'{name}.jpeg'); rows.append((name, int(lab[p.stem])))
    pd.DataFrame(rows, columns=['image', 'level']).to_csv(root/'trainLabels.csv', index=False)
    cfg = root/'config.yaml'
    cfg.write_text(f"name: scale{k}\ndata:\n  source: eyepacs\n  images: {root/'train'}\n"
                   f"  labels: {root/'trainLabels.csv'}\npreprocess:\n  size: 256\n")
    return cfg


def run_stage(stage:str, cfg:Path, run:Path) -> tuple[float, float]:
    "Seconds and peak RSS (MB, the stage's main process) of one stage in a fresh process."
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, '-c', RUN, STAGES[stage], str(cfg), str(run)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    el = time.perf_counter() - t
    if status: raise RuntimeError(f"stage {stage} failed: {p.stderr.read().decode()[-2000:]}")
    return el, ru.ru_maxrss / 1024


def listing_check(tmp:Path, n:int=88_702) -> dict:
    "Seconds to read an `n`-row label file and to list an `n`-file folder (`read_labels`, `scan_images`)."
    from dr_detection.data import read_labels, scan_images
    d = tmp/'listing'; (d/'photos').mkdir(parents=True)
    ids = [f'{i // 2}_{("left", "right")[i % 2]}' for i in range(n)]
    pd.DataFrame(dict(image=ids, level=[i % 5 for i in range(n)])).to_csv(d/'labels.csv', index=False)
    for i in ids: (d/'photos'/f'{i}.jpeg').touch()  # empty files: listing does not open them
    t = time.perf_counter(); lab = read_labels(d/'labels.csv'); t_lab = time.perf_counter() - t
    t = time.perf_counter(); files = scan_images(d/'photos'); t_ls = time.perf_counter() - t
    assert len(lab) == len(files) == n
    return dict(labels_s=round(t_lab, 2), listing_s=round(t_ls, 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--scales', type=int, nargs='+', default=[1, 4, 16])
    ap.add_argument('--folders', nargs='+', default=['eyepacs-1024/train', 'eyepacs-256/train'])
    ap.add_argument('--keep', action='store_true', help='keep the temporary folders')
    a = ap.parse_args()
    data = shared_data()
    if not (data/'labels/trainLabels.csv').exists(): sys.exit(f"real data folder {data} not found")
    labels = pd.read_csv(data/'labels/trainLabels.csv')
    tmp = Path(tempfile.mkdtemp(prefix='dr_scale_', dir=os.environ.get('DR_SCALE_TMP')))
    res = []
    try:
        for k in a.scales:
            cfg = make_layout(tmp/f'x{k}', [data/f for f in a.folders], labels, k)
            n = len(list((tmp/f'x{k}'/'train').iterdir()))
            for stage in STAGES:
                el, rss = run_stage(stage, cfg, tmp/f'x{k}'/'run')
                res.append(dict(scale=k, photos=n, stage=stage, s_per_1000=round(1000 * el / n, 2),
                                peak_rss_mb=round(rss), load=round(os.getloadavg()[0], 1)))
                print(res[-1], flush=True)
            shutil.rmtree(tmp/f'x{k}'/'run'/'preprocessed', ignore_errors=True)
        df = pd.DataFrame(res)
        print('\n' + df.to_string(index=False))
        lo, hi = min(a.scales), max(a.scales)
        print(f'\ntargets ({hi}x against {lo}x):')
        for stage in STAGES:
            r = df[df.stage == stage].set_index('scale')
            t_ratio, m_ratio = r.s_per_1000[hi] / r.s_per_1000[lo], r.peak_rss_mb[hi] / r.peak_rss_mb[lo]
            met = lambda ok: 'met' if ok else 'NOT met'
            print(f'  stage {stage}: time per photo {t_ratio:.2f}x ({met(t_ratio <= 1.2)}, <= 1.2x), '
                  f'peak memory {m_ratio:.2f}x ({met(m_ratio <= 1.5)}, <= 1.5x)')
        ls = listing_check(tmp)
        ok = ls['labels_s'] + ls['listing_s'] < 5
        print(f"  88,702 label rows read in {ls['labels_s']} s, an 88,702-file folder listed in {ls['listing_s']} s "
              f"({'met' if ok else 'NOT met'}, < 5 s together)")
        print(json.dumps(dict(rows=res, listing=ls)))
    finally:
        if not a.keep: shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
